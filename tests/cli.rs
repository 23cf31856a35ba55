//! The real `credrotd` binary against the real PostgreSQL: exit codes, bad input
//! that changes nothing, rotate/status/revoke, the daemon under signals, kill -9
//! and restart, the demo, and no password in anything it prints.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{assert_no_secret, version_of, wait_until, TestDb};

fn credrotd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_credrotd"));
    c.env_remove("CREDROTD_CONFIG").env("RUST_LOG", "trace");
    c
}

fn run(args: &[&str], config: &Path) -> Output {
    credrotd()
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .expect("run credrotd")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn account(name: &str, strategy: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    database: main\n    strategy: {strategy}\n{extra}    grants:\n\
         \x20     - {{ schema: public, privileges: [USAGE] }}\n\
         \x20     - {{ schema: public, tables: [orders], privileges: [SELECT] }}\n"
    )
}

async fn setup() -> TestDb {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE public.orders (id int)").await;
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exits_0_on_a_valid_inventory_and_1_with_located_errors() {
    let db = setup().await;
    let ok = db.write_inventory(&account(&db.name("a"), "ephemeral", ""));
    let out = run(&["check"], &ok);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("ok (1 account, 1 database, 1 store;"),
        "{}",
        text(&out)
    );

    let bad = db.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        db.inventory("  Bad-Name:\n    database: nowhere\n    schedule: \"nope\"\n"),
    )
    .unwrap();
    let out = run(&["check"], &bad);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    let base = bad.display().to_string();
    // Every error, each with file:line:column.
    for needle in [
        format!("{base}:14:3: error: account name \"Bad-Name\""),
        format!("{base}:15:15: error: account \"Bad-Name\": unknown database \"nowhere\""),
        format!("{base}:16:15: error: account \"Bad-Name\": invalid cron expression"),
    ] {
        assert!(t.contains(&needle), "missing {needle:?} in:\n{t}");
    }
}

/// First contact: `status` before anything was issued says so and creates no
/// ledger; `ctl` with no daemon names the OS error once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_without_a_ledger_and_ctl_without_a_daemon_say_so_plainly() {
    let db = setup().await;
    let name = db.name("fresh");
    let inv = db.write_inventory(&account(&name, "ephemeral", ""));
    let out = run(&["status"], &inv);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("nothing has been issued"), "{t}");
    assert!(
        t.contains(&name),
        "the inventory's accounts are listed: {t}"
    );
    assert!(!db.ledger_path().exists(), "status created a ledger");
    let out = credrotd()
        .arg("-c")
        .arg(&inv)
        .args(["ctl", "--socket"])
        .arg(db.dir.path().join("nobody-listens.sock"))
        .arg("health")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let t = text(&out);
    assert_eq!(t.matches("No such file or directory").count(), 1, "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_inventory_changes_nothing() {
    let db = setup().await;
    let good = account(&db.name("good"), "ephemeral", "");
    let broken = format!(
        "{good}  {}:\n    database: main\n    strategy: sideways\n",
        db.name("bad")
    );
    let path = db.write_inventory(&broken);
    for args in [&["rotate", "--all"][..], &["run"][..], &["plan"][..]] {
        let out = run(args, &path);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("unknown strategy \"sideways\""),
            "{}",
            text(&out)
        );
    }
    assert!(
        db.roles().await.is_empty(),
        "no role was created: {:?}",
        db.roles().await
    );
    assert!(!db.ledger_path().exists(), "no ledger was written");
    assert!(!db.secrets_dir().exists(), "nothing was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_status_revoke_round_trip_without_a_daemon() {
    let db = setup().await;
    let a = db.name("etl");
    let b = db.name("rep");
    let path = db.write_inventory(&format!(
        "{}{}",
        account(&a, "ephemeral", "    overlap: 1h\n"),
        account(&b, "alternating", "")
    ));
    let mut outputs = String::new();
    let mut passwords = Vec::new();

    let out = run(&["plan"], &path);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("would run: CREATE ROLE \"{a}\" NOLOGIN")),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("would rotate now (no current credential)"),
        "{}",
        text(&out)
    );
    assert!(db.roles().await.is_empty(), "plan is read-only");
    outputs.push_str(&text(&out));

    for round in 1..=2 {
        let out = run(&["rotate", "--all"], &path);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("2 rotated, 0 failed"), "{}", text(&out));
        // Off a terminal, progress is plain lines on stderr.
        let stderr = String::from_utf8_lossy(&out.stderr);
        for line in ["rotate: 1/2 accounts done", "rotate: 2/2 accounts done"] {
            assert!(stderr.contains(line), "{line:?} missing: {stderr}");
        }
        outputs.push_str(&text(&out));
        for acc in [&a, &b] {
            let p = db.published(acc);
            assert_eq!(p.version, round);
            db.login(&p.username, p.password.expose())
                .await
                .expect("published credential logs in");
            passwords.push(p.password.expose().to_owned());
        }
    }
    let out = run(&["rotate", &db.name("nope")], &path);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("is not in the inventory"),
        "{}",
        text(&out)
    );

    let out = run(&["status", "--format", "json"], &path);
    assert!(out.status.success(), "{}", text(&out));
    outputs.push_str(&text(&out));
    let rows: Vec<credrotd::api::AccountStatus> = serde_json::from_slice(&out.stdout).unwrap();
    let row = rows.iter().find(|r| r.account == a).unwrap();
    assert_eq!(row.current.as_ref().unwrap().version, 2);
    assert_eq!(
        row.previous.as_ref().unwrap().version,
        1,
        "v1 is in its overlap"
    );
    assert_eq!(row.last_result.as_deref(), Some("ok"));
    assert!(row.next_rotation.is_some());

    // Break-glass: previous only, then everything.
    let v1_user = row.previous.as_ref().unwrap().username.clone();
    let out = run(&["revoke", &a, "--previous-only"], &path);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!db.roles().await.contains(&v1_user));
    let current = db.published(&a);
    db.login(&current.username, current.password.expose())
        .await
        .expect("current survives --previous-only");
    let out = run(&["revoke", &a], &path);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("suspended"), "{}", text(&out));
    assert!(
        db.login(&current.username, current.password.expose())
            .await
            .is_err(),
        "break-glass revoke kills the current login"
    );
    let out = run(&["status"], &path);
    assert!(text(&out).contains("(suspended)"), "{}", text(&out));
    outputs.push_str(&text(&out));
    // Break-glass sticks: `rotate --all` skips the suspended account.
    let out = run(&["rotate", "--all"], &path);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{a}: skipped: suspended")),
        "{}",
        text(&out)
    );
    outputs.push_str(&text(&out));
    assert!(
        db.login(&current.username, current.password.expose())
            .await
            .is_err(),
        "still revoked"
    );
    let rows: Vec<credrotd::api::AccountStatus> =
        serde_json::from_slice(&run(&["status", "--format", "json"], &path).stdout).unwrap();
    let row = rows.iter().find(|r| r.account == a).unwrap();
    assert!(row.suspended && row.current.is_none(), "{row:?}");
    // An explicit rotate lifts the suspension.
    let out = run(&["rotate", &a], &path);
    assert!(out.status.success(), "{}", text(&out));
    let p = db.published(&a);
    db.login(&p.username, p.password.expose()).await.unwrap();
    passwords.push(p.password.expose().to_owned());

    // Several accounts in one run: every previous credential goes, the
    // current ones stay; then both accounts at once, by name.
    let previous = |acc: &str| {
        let rows: Vec<credrotd::api::AccountStatus> =
            serde_json::from_slice(&run(&["status", "--format", "json"], &path).stdout).unwrap();
        let row = rows.into_iter().find(|r| r.account == acc).unwrap();
        row.previous.map(|p| p.username)
    };
    let out = run(&["rotate", "--all"], &path);
    assert!(out.status.success(), "{}", text(&out));
    let in_overlap = previous(&a).expect("the credential before keeps its overlap");
    let out = run(&["revoke", "--all", "--previous-only"], &path);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("of 2 accounts revoked, 0 failed"),
        "{}",
        text(&out)
    );
    outputs.push_str(&text(&out));
    assert!(!db.roles().await.contains(&in_overlap));
    assert_eq!(previous(&a), None);
    for acc in [&a, &b] {
        let p = db.published(acc);
        db.login(&p.username, p.password.expose())
            .await
            .expect("current survives revoke --all --previous-only");
    }
    let out = run(&["revoke", &a, &b], &path);
    assert!(out.status.success(), "{}", text(&out));
    outputs.push_str(&text(&out));
    for acc in [&a, &b] {
        assert!(
            text(&out).contains(&format!("{acc}: suspended")),
            "{}",
            text(&out)
        );
        let p = db.published(acc);
        assert!(db.login(&p.username, p.password.expose()).await.is_err());
    }
    let out = run(&["revoke"], &path);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an account or --all is required"
    );
    // On a terminal (a pty from script(1)) progress is a bar, not lines.
    let out = Command::new("script")
        .arg("-qec")
        .arg(format!(
            "{} -c {} rotate --all",
            env!("CARGO_BIN_EXE_credrotd"),
            path.display()
        ))
        .arg("/dev/null")
        .env_remove("CREDROTD_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("script(1) from util-linux");
    let tty = text(&out);
    assert!(tty.contains("0 rotated, 0 failed, 2 skipped"), "{tty}");
    assert!(tty.contains("rotate ["), "the bar is drawn: {tty}");
    assert!(!tty.contains("accounts done"), "{tty}");
    outputs.push_str(&tty);

    assert_no_secret(
        "credrotd's output at RUST_LOG=trace",
        outputs.as_bytes(),
        &passwords,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_rotates_on_schedule_and_stops_cleanly_on_sigterm() {
    let db = setup().await;
    let a = db.name("tick");
    let path = db.write_inventory(&account(
        &a,
        "ephemeral",
        "    schedule: \"*/3 * * * * *\"\n    overlap: 2s\n    expiry_margin: 30s\n",
    ));
    let log = db.dir.path().join("daemon.log");
    let child = credrotd()
        .arg("-c")
        .arg(&path)
        .args(["--log-format", "json", "run"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut child = child;
    let mut passwords = Vec::new();
    let mut seen = 0;
    wait_until("three versions", Duration::from_secs(30), || {
        let v = version_of(&db, &a);
        if v > seen {
            seen = v;
            passwords.push(db.published(&a).password.expose().to_owned());
        }
        v >= 3
    });
    // The first credential's overlap has ended: it is revoked and dropped.
    let ledger =
        credrotd::ledger::Ledger::open(&format!("sqlite://{}", db.ledger_path().display()))
            .await
            .unwrap();
    let creds = ledger.credentials(&a).await.unwrap();
    assert_eq!(
        creds[0].state,
        credrotd::ledger::CredState::Revoked,
        "{creds:?}"
    );
    assert!(!db.roles().await.contains(&creds[0].username));
    ledger.close().await;

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    let logs = std::fs::read(&log).unwrap();
    assert!(
        String::from_utf8_lossy(&logs).contains("SIGTERM"),
        "json log mentions the signal"
    );
    for line in String::from_utf8_lossy(&logs).lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    }
    assert_no_secret("the daemon's trace log", &logs, &passwords);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_a_restart_recovers_and_carries_on() {
    let db = setup().await;
    let a = db.name("kill");
    let path = db.write_inventory(&account(
        &a,
        "ephemeral",
        "    schedule: \"* * * * * *\"\n    overlap: 0\n    expiry_margin: 30s\n",
    ));
    let mut child = credrotd()
        .arg("-c")
        .arg(&path)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("a few rotations", Duration::from_secs(30), || {
        version_of(&db, &a) >= 3
    });
    child.kill().unwrap(); // SIGKILL, mid-whatever it was doing
    child.wait().unwrap();

    // A restart (here: a one-shot rotate, which recovers first) finishes the job.
    let out = run(&["rotate", &a], &path);
    assert!(out.status.success(), "{}", text(&out));
    let ledger =
        credrotd::ledger::Ledger::open(&format!("sqlite://{}", db.ledger_path().display()))
            .await
            .unwrap();
    let creds = ledger.credentials(&a).await.unwrap();
    assert!(creds.iter().all(|c| !c.state.is_middle()), "{creds:?}");
    let live: Vec<String> = creds
        .iter()
        .filter(|c| c.state.is_live())
        .map(|c| c.username.clone())
        .collect();
    assert!(live.len() <= 2, "{live:?}");
    // Every login role of the account in the database is one the ledger knows.
    for role in db
        .roles()
        .await
        .into_iter()
        .filter(|r| r.starts_with(&format!("{a}_")))
    {
        assert!(live.contains(&role), "unknown login {role} survived");
    }
    let p = db.published(&a);
    db.login(&p.username, p.password.expose())
        .await
        .expect("current logs in after recovery");
    ledger.close().await;
}

#[test]
fn demo_shows_issue_rotate_overlap_and_revoke_on_its_own_cluster() {
    let out = Command::new(env!("CARGO_BIN_EXE_credrotd"))
        .args(["demo", "--duration", "50s"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for needle in [
        "login ok",
        "still works (overlap)",
        "refused",
        "credential revoked",
        "final status:",
    ] {
        assert!(t.contains(needle), "demo output lacks {needle:?}:\n{t}");
    }
    assert!(
        !t.contains("login FAILED"),
        "a published credential failed to log in:\n{t}"
    );
}

/// The same story on a MariaDB server the demo starts itself (least-privilege
/// admin, consumer over TCP), and nothing secret in what it prints: not the
/// admin's password, not the passwords the store holds at the end, and no token
/// shaped like a generated password at all (the earlier ones are gone by then).
#[test]
fn demo_shows_issue_rotate_overlap_and_revoke_on_its_own_mariadb() {
    let out = Command::new(env!("CARGO_BIN_EXE_credrotd"))
        .args(["demo", "--engine", "mariadb", "--duration", "50s", "--keep"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let t = text(&out);
    // --keep leaves the directory (secrets, the admin's password file) to compare
    // the output with; removed here whatever happens.
    struct Remove(Option<std::path::PathBuf>);
    impl Drop for Remove {
        fn drop(&mut self) {
            if let Some(p) = &self.0 {
                let _ = std::fs::remove_dir_all(p);
            }
        }
    }
    let kept = Remove(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("kept "))
            .map(std::path::PathBuf::from),
    );
    assert!(out.status.success(), "{t}");
    for needle in [
        "starting a throwaway MariaDB server",
        "login ok",
        "still works (overlap)",
        "refused",
        "credential revoked",
        "final status:",
    ] {
        assert!(t.contains(needle), "demo output lacks {needle:?}:\n{t}");
    }
    assert!(
        !t.contains("login FAILED"),
        "a published credential failed to log in:\n{t}"
    );

    let dir = kept.0.as_deref().expect("--keep names the directory");
    let mut secrets = vec![std::fs::read_to_string(dir.join("admin.password")).unwrap()];
    for e in std::fs::read_dir(dir.join("secrets")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "json") {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            secrets.push(v["password"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(secrets.len(), 4, "the admin and three accounts: {dir:?}");
    assert_no_secret("the demo's output", t.as_bytes(), &secrets);
    let password_like = |w: &&str| {
        w.len() == credrotd::secret::PASSWORD_LEN
            && w.bytes().any(|b| b.is_ascii_uppercase())
            && w.bytes().any(|b| b.is_ascii_lowercase())
            && w.bytes().any(|b| b.is_ascii_digit())
    };
    let found: Vec<&str> = t
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(password_like)
        .collect();
    assert!(
        found.is_empty(),
        "the demo printed {} password-like token(s)",
        found.len()
    );
}

#[test]
fn every_example_inventory_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = run(&["check"], &path);
            assert!(out.status.success(), "{}: {}", path.display(), text(&out));
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "found only {checked} examples in {}",
        dir.display()
    );
}

/// Every example inventory names the schema for editors and validates against
/// it with an independent validator (Python's `jsonschema`, which
/// `./scripts/test` installs into `.venv`); an inventory that breaks the
/// schema is refused by the validator too, so the check can fail.
#[test]
fn every_example_inventory_validates_against_the_json_schema() {
    let python = std::env::var("CREDROTD_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("CREDROTD_TEST_PYTHON is not set: run the suite with ./scripts/test")
    });
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let schema = root.join("config/inventory.schema.json");
    let out = credrotd().arg("schema").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(&schema).unwrap(),
        "`credrotd schema` prints the committed schema"
    );
    let validate = |file: &Path| {
        Command::new(&python)
            .arg("-c")
            .arg(
                "import json, sys, yaml, jsonschema\n\
                 schema = json.load(open(sys.argv[1]))\n\
                 jsonschema.Draft202012Validator.check_schema(schema)\n\
                 doc = yaml.safe_load(open(sys.argv[2]))\n\
                 errors = list(jsonschema.Draft202012Validator(schema).iter_errors(doc))\n\
                 [print(list(e.absolute_path), e.message) for e in errors]\n\
                 sys.exit(1 if errors else 0)\n",
            )
            .arg(&schema)
            .arg(file)
            .output()
            .unwrap()
    };
    let mut validated = 0;
    for entry in std::fs::read_dir(root.join("config/examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let yaml = std::fs::read_to_string(&path).unwrap();
            assert!(
                yaml.starts_with("# yaml-language-server: $schema=../inventory.schema.json\n"),
                "{} does not name the schema on its first line",
                path.display()
            );
            let out = validate(&path);
            assert!(out.status.success(), "{}: {}", path.display(), text(&out));
            validated += 1;
        }
    }
    assert!(validated >= 3);
    // The control: a misspelt key and a wrong type are refused.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let good = std::fs::read_to_string(root.join("config/examples/postgres.yaml")).unwrap();
    std::fs::write(&bad, good.replace("version: 1", "version: one\nschedul: x")).unwrap();
    let out = validate(&bad);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("schedul") && t.contains("'one'"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_password_files_come_from_systemds_credentials_directory() {
    let db = setup().await;
    let a = db.name("cred");
    let creds = db.dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::copy(&db.password_file, creds.join("main-admin")).unwrap();
    let yaml = db.inventory(&account(&a, "ephemeral", "")).replace(
        &format!("password_file: {}", db.password_file.display()),
        "password_file: main-admin",
    );
    let path = db.dir.path().join("inventory.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = credrotd()
        .arg("-c")
        .arg(&path)
        .args(["rotate", "--all"])
        .env("CREDENTIALS_DIRECTORY", &creds)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let p = db.published(&a);
    db.login(&p.username, p.password.expose()).await.unwrap();
    // Without the variable the same relative path is looked up beside the
    // inventory, where it does not exist.
    let out = run(&["rotate", "--all"], &path);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("cannot read the admin password"),
        "{}",
        text(&out)
    );
}

#[test]
fn demo_says_what_to_install_when_postgresql_is_missing() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_credrotd"))
        .args(["demo", "--duration", "1s"])
        .env("CREDROTD_PG_BINDIR", empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(
        t.contains("initdb, pg_ctl") && t.contains("apt-get install postgresql"),
        "{t}"
    );
}

#[test]
fn demo_says_what_to_install_when_mariadb_is_missing() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_credrotd"))
        .args(["demo", "--engine", "mariadb", "--duration", "1s"])
        .env("CREDROTD_MARIADB_BINDIR", empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(
        t.contains("mariadb-install-db, mariadbd") && t.contains("apt-get install mariadb-server"),
        "{t}"
    );
}

/// What `credrotd rotate` saw is what `status` shows: a failed CLI rotation is
/// recorded in the ledger like the daemon's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_cli_rotation_is_what_status_shows() {
    let db = setup().await;
    let a = db.name("gone");
    let missing = db.name("no_such_role");
    let path = db.write_inventory(&account(
        &a,
        "static",
        &format!("    role: {missing}\n    overlap: 0\n"),
    ));
    let out = run(&["rotate", &a], &path);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = run(&["status", "--format", "json"], &path);
    let rows: Vec<credrotd::api::AccountStatus> = serde_json::from_slice(&out.stdout).unwrap();
    let row = rows.iter().find(|r| r.account == a).unwrap();
    assert_eq!(row.last_result.as_deref(), Some("failed"), "{row:?}");
    assert_eq!(row.failures, 1);
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains(&missing)),
        "{row:?}"
    );
}

/// Another process of credrotd's user cannot read its environment (where
/// `password_env` secrets live) or memory: the binary marks itself
/// non-dumpable before reading anything. The control — an ordinary process of
/// the same user — shows that the same read works otherwise.
#[test]
fn another_process_of_the_same_user_cannot_read_credrotds_environment() {
    use std::os::unix::process::CommandExt;
    const NOBODY: u32 = 65534;
    let dir = tempfile::tempdir().unwrap();
    // A socket that accepts and never answers keeps `ctl` waiting.
    let socket = dir.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let spawn_as_nobody = |cmd: &mut Command| {
        cmd.uid(NOBODY)
            .gid(NOBODY)
            .env("CREDROTD_TEST_SECRET", "env-secret-0123456789")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut credrotd = spawn_as_nobody(
        Command::new(env!("CARGO_BIN_EXE_credrotd"))
            .args(["ctl", "--socket"])
            .arg(&socket)
            .arg("health"),
    );
    let _accepted = listener.accept().unwrap();
    let mut ordinary = spawn_as_nobody(Command::new("sleep").arg("30"));
    let read_environ_as_nobody = |pid: u32| {
        Command::new("cat")
            .arg(format!("/proc/{pid}/environ"))
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap()
    };
    let control = read_environ_as_nobody(ordinary.id());
    let attempt = read_environ_as_nobody(credrotd.id());
    let _ = credrotd.kill();
    let _ = ordinary.kill();
    let _ = credrotd.wait();
    let _ = ordinary.wait();
    assert!(
        String::from_utf8_lossy(&control.stdout).contains("env-secret-0123456789"),
        "control: the same user reads an ordinary process's environment: {control:?}"
    );
    assert!(
        !attempt.status.success()
            && !String::from_utf8_lossy(&attempt.stdout).contains("env-secret"),
        "credrotd's environment was readable: {attempt:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_drafts_an_inventory_that_check_accepts_and_rotate_adopts() {
    let db = setup().await;
    let etl = db.name("etl");
    let readers = db.name("readers");
    let person = format!("{}.jane", db.tag);
    let old = db.name("old");
    db.exec(&format!(
        "CREATE ROLE {etl} LOGIN PASSWORD 'before-adoption';
         CREATE ROLE {readers} NOLOGIN;
         GRANT {readers} TO {etl};
         GRANT USAGE ON SCHEMA public TO {etl};
         GRANT SELECT, INSERT ON public.orders TO {etl};
         GRANT TRUNCATE ON public.orders TO {etl};
         CREATE ROLE \"{person}\" LOGIN;
         CREATE ROLE {old} LOGIN VALID UNTIL '2020-01-01'"
    ))
    .await;
    // The admin password goes in the URL: used to connect, never written out.
    let admin_password = std::fs::read_to_string(&db.password_file).unwrap();
    let admin_password = admin_password.trim_end();
    let url_with_password = db.url.replacen(
        &format!("//{}@", db.admin_user),
        &format!("//{}:{admin_password}@", db.admin_user),
        1,
    );
    assert_ne!(url_with_password, db.url);
    let draft = db.dir.path().join("draft.yaml");
    let out = credrotd()
        .args(["import", "--database"])
        .arg(format!("main={url_with_password}"))
        .arg("-o")
        .arg(&draft)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("review it"), "{}", text(&out));
    let yaml = std::fs::read_to_string(&draft).unwrap();
    let secrets = [admin_password.to_owned()];
    assert_no_secret("import's output", text(&out).as_bytes(), &secrets);
    assert_no_secret("the draft", yaml.as_bytes(), &secrets);

    let section = yaml
        .split(&format!("  {etl}_account:\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("no account for {etl}:\n{yaml}"))
        .split("\n\n")
        .next()
        .unwrap();
    for want in [
        format!("role: {etl}"),
        "strategy: static".to_owned(),
        "adopt: true".to_owned(),
        "- { schema: public, privileges: [USAGE] }".to_owned(),
        "- { schema: public, tables: [orders], privileges: [INSERT, SELECT, TRUNCATE] }".to_owned(),
        format!("member_of: [{readers}]"),
        "# EXCESSIVE: DDL privileges (TRUNCATE)".to_owned(),
    ] {
        assert!(section.contains(&want), "{want:?} missing from:\n{section}");
    }
    assert!(yaml.contains(&format!("main: {person} (looks like a person")));
    let old_section = yaml.split(&format!("  {old}_account:\n")).nth(1).unwrap();
    assert!(old_section.contains("# UNUSED?: its password expired on 2020-01-01"));
    assert!(
        !yaml.contains(&format!("{readers}_account")),
        "a group role is no account"
    );

    // What it writes passes check as it is (the admin password file it names
    // sits next to it).
    std::fs::copy(&db.password_file, db.dir.path().join("main")).unwrap();
    let out = run(&["check"], &draft);
    assert!(out.status.success(), "{}\n{yaml}", text(&out));
    // It does not overwrite.
    let again = credrotd()
        .args(["import", "--database", &db.url, "-o"])
        .arg(&draft)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again).contains("does not overwrite"),
        "{}",
        text(&again)
    );

    // Pointed at a ledger and a store, the draft adopts the login: a rotation
    // changes its password in place and the published one logs in with
    // today's grants.
    let runnable = yaml
        .replace(
            "sqlite:///var/lib/credrotd/state.db",
            &format!("sqlite://{}", db.ledger_path().display()),
        )
        .replace(
            "/run/credrotd/secrets",
            &db.secrets_dir().display().to_string(),
        );
    std::fs::write(&draft, runnable).unwrap();
    let account = format!("{etl}_account");
    let out = run(&["rotate", &account], &draft);
    assert!(out.status.success(), "{}", text(&out));
    let p = db.published(&account);
    assert_eq!(p.username, etl);
    let mut c = db
        .login(&etl, p.password.expose())
        .await
        .expect("adopted login works");
    sqlx::query("SELECT count(*) FROM public.orders")
        .fetch_one(&mut c)
        .await
        .expect("with today's grants");
    assert!(db.login(&etl, "before-adoption").await.is_err());
}
