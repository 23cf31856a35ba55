//! `credrotd audit` and `who-can` through the binary against the real
//! PostgreSQL: a database credrotd just rotated audits clean; each planted
//! fault is found with the right kind and role; `who-can` follows membership
//! chains; the daemon samples sessions, audits on its schedule and exports the
//! findings. Roles are cluster-wide, so the tests of this binary take turns
//! ([`CLUSTER`]): no other test adds roles while one counts findings.

mod common;

use std::path::Path;
use std::process::Command;

use common::{assert_no_secret, output_text as text, run_credrotd as run, TestDb};

/// Held by each test for its whole run.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn audit_json(config: &Path) -> (i32, Vec<serde_json::Value>, String) {
    let out = run(&["audit", "--format", "json"], config);
    let all = text(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("audit prints JSON ({e}): {all}"));
    let findings = v["findings"].as_array().cloned().unwrap_or_default();
    (out.status.code().unwrap_or(-1), findings, all)
}

fn has(findings: &[serde_json::Value], kind: &str, role: &str, detail: &str) -> bool {
    findings.iter().any(|f| {
        f["kind"] == kind
            && f["role"] == role
            && f["detail"].as_str().unwrap_or("").contains(detail)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_database_audits_clean_and_every_planted_fault_is_found() {
    let _turn = CLUSTER.lock().await;
    let db = TestDb::new().await;
    let t = &db.tag;
    db.exec(
        "CREATE TABLE orders (id serial PRIMARY KEY, total int);
         CREATE TABLE events (id int, kind text);
         CREATE TABLE customers (id int, name text);
         CREATE TABLE payroll (id int, salary int);
         CREATE FUNCTION add_one(n int) RETURNS int LANGUAGE sql AS 'SELECT n + 1'",
    )
    .await;
    db.exec(&format!(
        "CREATE TABLE tenant_rows (tenant_id int);
         ALTER TABLE tenant_rows OWNER TO {};
         ALTER TABLE tenant_rows ENABLE ROW LEVEL SECURITY",
        db.owner
    ))
    .await;
    let (etl, rep, rls) = (db.name("etl"), db.name("rep"), db.name("rls"));
    let accounts = format!(
        "  {etl}:\n    database: main\n    grants:\n\
         \x20     - {{ schema: public, privileges: [USAGE] }}\n\
         \x20     - {{ schema: public, tables: [orders], privileges: [SELECT] }}\n\
         \x20 {rep}:\n    database: main\n    strategy: alternating\n    grants:\n\
         \x20     - {{ schema: public, privileges: [USAGE] }}\n\
         \x20     - {{ schema: public, tables: [orders], privileges: [SELECT] }}\n\
         \x20     - {{ schema: public, tables: [events], privileges: [SELECT, INSERT] }}\n\
         \x20     - {{ schema: public, sequences: [orders_id_seq], privileges: [USAGE] }}\n\
         \x20     - {{ schema: public, functions: [add_one], privileges: [EXECUTE] }}\n\
         \x20 {rls}:\n    database: main\n    grants:\n\
         \x20     - {{ schema: public, privileges: [USAGE] }}\n\
         \x20     - {{ schema: public, tables: [tenant_rows], privileges: [SELECT], row_filter: \"tenant_id = 42\" }}\n"
    );
    let config = db.write_inventory(&accounts);
    let mut secrets = Vec::new();
    for _ in 0..3 {
        let out = run(&["rotate", "--all"], &config);
        assert!(out.status.success(), "{}", text(&out));
        for a in [&etl, &rep, &rls] {
            secrets.push(db.published(a).password.expose().to_owned());
        }
    }

    // Clean: three rotations in, a retiring ephemeral login, a locked twin.
    let (code, findings, out) = audit_json(&config);
    assert_eq!(code, 0, "{out}");
    assert_eq!(findings, Vec::<serde_json::Value>::new(), "{out}");
    assert!(
        out.contains(&format!("\"role\": \"{t}_admin\"")),
        "the admin is a note: {out}"
    );
    let table = run(&["audit"], &config);
    assert!(text(&table).contains("no findings"), "{}", text(&table));

    // Plant one of each.
    let current_etl = db.published(&etl).username;
    // The account's declared privileges are its privilege role's.
    let rep_held = db.privilege_role(&rep).await;
    let dbname = &db.dbname;
    let admin = &db.admin_user;
    let superuser = db
        .query_strings("SELECT rolname::text FROM pg_roles WHERE oid = 10")
        .await
        .remove(0);
    db.exec(&format!(
        "CREATE ROLE {t}_gone NOLOGIN; COMMENT ON ROLE {t}_gone IS 'credrotd:scoped account={t}_gone';
         CREATE ROLE {t}_gone_20260101000000 LOGIN; COMMENT ON ROLE {t}_gone_20260101000000 IS 'credrotd:login account={t}_gone';
         GRANT DELETE ON orders TO {etl};
         GRANT CREATE ON SCHEMA public TO {etl};
         GRANT USAGE ON SEQUENCE orders_id_seq TO {etl};
         GRANT EXECUTE ON FUNCTION add_one(int) TO {etl};
         SET ROLE {admin}; REVOKE INSERT ON events FROM {rep_held}; REVOKE USAGE ON SCHEMA public FROM {rep_held};
         REVOKE USAGE ON SEQUENCE orders_id_seq FROM {rep_held}; REVOKE EXECUTE ON FUNCTION add_one(int) FROM {rep_held}; RESET ROLE;
         GRANT SELECT (salary) ON payroll TO {etl};
         GRANT SELECT ON orders TO {rep_held} WITH GRANT OPTION;
         GRANT CREATE ON DATABASE {dbname} TO {etl};
         GRANT SELECT ON customers TO {current_etl};
         CREATE ROLE {t}_intruder LOGIN; GRANT {etl} TO {t}_intruder;
         CREATE ROLE {t}_old LOGIN VALID UNTIL '2020-01-01';
         CREATE ROLE {t}_forever LOGIN VALID UNTIL 'infinity';
         CREATE ROLE {t}_su SUPERUSER;
         CREATE ROLE {t}_cdb CREATEDB CREATEROLE;
         CREATE ROLE {t}_repl REPLICATION BYPASSRLS;
         CREATE ROLE {t}_rdr IN ROLE pg_read_all_data;
         CREATE ROLE {t}_ro1; CREATE ROLE {t}_ro2; CREATE ROLE {t}_rw;
         GRANT SELECT ON customers, payroll TO {t}_ro1, {t}_ro2, {t}_rw;
         GRANT INSERT ON customers TO {t}_rw;
         ALTER POLICY credrotd_{rls} ON tenant_rows USING (true)"
    ))
    .await;
    let (code, findings, out) = audit_json(&config);
    assert_eq!(code, 1, "{out}");
    let also_held = format!("also held by {t}_rw");
    // What reconciliation corrects shows as the statement the next rotation
    // runs, under the account's name.
    let direct = format!("ON TABLE \"public\".\"customers\" FROM \"{current_etl}\"");
    let intruder = format!("REVOKE \"{etl}\" FROM \"{t}_intruder\"");
    let expect: Vec<(&str, String, &str)> = vec![
        ("orphan", format!("{t}_gone"), "no longer lists"),
        (
            "orphan",
            format!("{t}_gone_20260101000000"),
            "it can log in",
        ),
        ("drift", etl.clone(), "REVOKE DELETE ON TABLE"),
        ("drift", etl.clone(), "REVOKE CREATE ON SCHEMA"),
        ("drift", etl.clone(), "ON SEQUENCE"),
        ("drift", etl.clone(), "add_one"),
        ("drift", rep.clone(), "GRANT INSERT ON TABLE"),
        ("drift", rep.clone(), "GRANT USAGE ON SCHEMA"),
        ("drift", rep.clone(), "GRANT USAGE ON SEQUENCE"),
        ("drift", rep.clone(), "GRANT EXECUTE ON"),
        ("drift", etl.clone(), "REVOKE SELECT (\"salary\") ON TABLE"),
        ("drift", rep.clone(), "REVOKE GRANT OPTION FOR SELECT"),
        ("drift", etl.clone(), "REVOKE CREATE ON DATABASE"),
        ("drift", etl.clone(), &direct),
        ("drift", etl.clone(), &intruder),
        ("drift", rls.clone(), "CREATE POLICY"),
        ("expired", format!("{t}_old"), "expired at 2020-01-01"),
        ("dangerous", format!("{t}_su"), "SUPERUSER"),
        ("dangerous", format!("{t}_cdb"), "CREATEDB"),
        ("dangerous", format!("{t}_cdb"), "CREATEROLE"),
        ("dangerous", format!("{t}_repl"), "REPLICATION"),
        ("dangerous", format!("{t}_repl"), "BYPASSRLS"),
        (
            "dangerous",
            format!("{t}_rdr"),
            "membership in pg_read_all_data",
        ),
        ("bloat", format!("{t}_ro1"), "hold the same 2 privileges"),
        ("bloat", format!("{t}_ro1"), &also_held),
    ];
    for (kind, role, detail) in &expect {
        assert!(
            has(&findings, kind, role, detail),
            "missing {kind} {role} {detail:?}: {out}"
        );
    }
    // Nothing about the login that never expires, nor the admin.
    for quiet in [format!("{t}_forever"), format!("{t}_admin")] {
        assert!(
            !findings.iter().any(|f| f["role"] == quiet.as_str()),
            "{quiet}: {out}"
        );
    }
    // Every finding carries a fix but bloat (a person merges roles).
    for f in &findings {
        assert!(f["fix"].is_string() || f["kind"] == "bloat", "{f}");
    }
    assert_no_secret("audit output", out.as_bytes(), &secrets);

    // --database narrows; an unknown one is an error that ran nothing (2).
    let out = run(&["audit", "--database", "nope"], &config);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // The fixes it prints work: run every one, then the audit is clean again.
    let fixes: Vec<String> = findings
        .iter()
        .filter_map(|f| f["fix"].as_str().map(str::to_owned))
        .collect();
    for fix in &fixes {
        db.exec(fix).await;
    }
    db.exec(&format!(
        "DROP OWNED BY {t}_ro1, {t}_ro2, {t}_rw; DROP ROLE {t}_ro1, {t}_ro2, {t}_rw, {t}_forever"
    ))
    .await;
    let (code, findings, out) = audit_json(&config);
    assert_eq!(code, 0, "{out}");
    assert_eq!(findings, Vec::<serde_json::Value>::new(), "{out}");
    // ... and the consumers still log in.
    for a in [&etl, &rep, &rls] {
        let p = db.published(a);
        db.login(&p.username, p.password.expose())
            .await
            .unwrap_or_else(|e| panic!("{a} after the fixes: {e}"));
    }

    // who-can, through two levels of membership.
    db.exec(&format!(
        "CREATE ROLE {t}_grp1; CREATE ROLE {t}_grp2 IN ROLE {t}_grp1;
         CREATE ROLE {t}_bob LOGIN IN ROLE {t}_grp2;
         GRANT SELECT ON payroll TO {t}_grp1"
    ))
    .await;
    let out = run(
        &["who-can", "select", "public.payroll", "--format", "json"],
        &config,
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let holders = v[0]["holders"].as_array().unwrap();
    let bob = holders
        .iter()
        .find(|h| h["role"] == format!("{t}_bob").as_str())
        .unwrap_or_else(|| panic!("{}", text(&out)));
    assert_eq!(
        bob["chain"],
        serde_json::json!([format!("{t}_bob"), format!("{t}_grp2"), format!("{t}_grp1")])
    );
    assert_eq!(bob["can_login"], true);
    assert_eq!(bob["via"], "SELECT on table public.payroll");
    // The table's owner and the cluster's superuser can; the accounts cannot.
    let roles: Vec<&str> = holders.iter().filter_map(|h| h["role"].as_str()).collect();
    assert!(roles.contains(&superuser.as_str()), "{roles:?}");
    assert!(
        !roles.contains(&etl.as_str()) && !roles.contains(&rep.as_str()),
        "{roles:?}"
    );
    let table = text(&run(&["who-can", "SELECT", "public.payroll"], &config));
    assert!(
        table.contains(&format!(
            "{t}_bob (login): {t}_bob -> {t}_grp2 -> {t}_grp1 via SELECT on table public.payroll"
        )),
        "{table}"
    );
}

struct Daemon(std::process::Child, std::path::PathBuf);

impl Daemon {
    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.1).unwrap_or_default()).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_samples_sessions_audits_on_schedule_and_exports_findings() {
    let _turn = CLUSTER.lock().await;
    let db = TestDb::new().await;
    let t = &db.tag;
    db.exec("CREATE TABLE orders (id int)").await;
    let app = db.name("app");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let top = format!(
        "admin: {{ socket: {}, allow_uids: [{}] }}\n\
         metrics: {{ listen: \"127.0.0.1:{port}\" }}\n\
         audit: {{ schedule: \"*/2 * * * * *\", sample_every: 1s, stale_after: 1h }}\n",
        db.dir.path().join("admin.sock").display(),
        nix::unistd::geteuid().as_raw()
    );
    let accounts = format!(
        "  {app}:\n    database: main\n    grants:\n\
         \x20     - {{ schema: public, privileges: [USAGE] }}\n\
         \x20     - {{ schema: public, tables: [orders], privileges: [SELECT] }}\n"
    );
    let config = db.write_inventory_with(&top, &accounts);
    let log = db.dir.path().join("daemon.log");
    let d = Daemon(
        Command::new(env!("CARGO_BIN_EXE_credrotd"))
            .env_remove("CREDROTD_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "debug,sqlx=warn,hyper=info")
            .arg("-c")
            .arg(&config)
            .arg("run")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        log,
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let wait = |what: &str, f: &mut dyn FnMut() -> bool| {
        while !f() {
            assert!(std::time::Instant::now() < deadline, "{what}:\n{}", d.log());
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    wait("the first credential", &mut || {
        db.secrets_dir().join(format!("{app}.json")).exists()
    });
    // A consumer logs in and stays: the daemon's samples see its login.
    let published = db.published(&app);
    let _session = db
        .login(&published.username, published.password.expose())
        .await
        .expect("the consumer logs in");
    let ledger = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.ledger_path().display()))
        .await
        .unwrap();
    let mut seen = false;
    for _ in 0..100 {
        let roles: Vec<String> =
            sqlx::query_scalar("SELECT role FROM activity WHERE database = 'main'")
                .fetch_all(&ledger)
                .await
                .unwrap_or_default();
        if roles.contains(&published.username) {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        seen,
        "the consumer's session was never sampled:\n{}",
        d.log()
    );
    wait("a scheduled audit", &mut || {
        // (The timestamp gauge reads 0 until then; the findings appear with
        // the first audit.)
        http_get(port, "/metrics").contains("credrotd_audit_findings{")
    });
    assert!(
        http_get(port, "/metrics")
            .contains("credrotd_audit_findings{kind=\"orphan\",severity=\"error\"} 0"),
        "{}",
        http_get(port, "/metrics")
    );

    // An orphan login appears: the next scheduled audit counts it.
    db.exec(&format!(
        "CREATE ROLE {t}_lost_20260101000000 LOGIN;
         COMMENT ON ROLE {t}_lost_20260101000000 IS 'credrotd:login account={t}_lost'"
    ))
    .await;
    wait("the orphan in the metrics", &mut || {
        http_get(port, "/metrics")
            .contains("credrotd_audit_findings{kind=\"orphan\",severity=\"error\"} 1")
    });
    // ctl audit asks the daemon for a fresh one: exit 1, the orphan named.
    let out = run(&["ctl", "audit", "--format", "json"], &config);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "orphan"
                && f["role"] == format!("{t}_lost_20260101000000").as_str()),
        "{v}"
    );
    // With a session seen a moment ago, the account is not stale (the window
    // is shorter than stale_after: a note says so).
    assert!(
        !v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "stale"),
        "{v}"
    );
    assert_no_secret(
        "ctl audit",
        &out.stdout,
        &[published.password.expose().to_owned()],
    );
    assert_no_secret(
        "the daemon's log",
        d.log().as_bytes(),
        &[published.password.expose().to_owned()],
    );
    ledger.close().await;
}
