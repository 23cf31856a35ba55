//! TLS to databases, with the real binary: against the PostgreSQL that
//! `scripts/test` starts with `ssl=on`, a certificate for localhost/127.0.0.1
//! from a test CA, and `hostssl` as the only TCP lines of its pg_hba.conf.
//! credrotd rotates over verified TLS (its verify login too), refuses a server
//! whose certificate another CA signed or that names another host, and `check`
//! refuses an unverified database on another host in production.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use common::{output_text, pg_tls, run_credrotd, TestDb};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection};

/// The TLS cluster's superuser URL with `sslmode=verify-full` and the test CA.
fn verified_cluster_url() -> String {
    let (url, ca) = pg_tls();
    format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display())
}

/// The TLS cluster's server log (`log_connections=on`).
fn server_log() -> String {
    let path = std::env::var("CREDROTD_TEST_PG_TLS_LOG")
        .expect("CREDROTD_TEST_PG_TLS_LOG (run ./scripts/test)");
    std::fs::read_to_string(path).expect("read the TLS cluster's log")
}

/// The server's `connection authorized` lines for `user`.
fn authorized(log: &str, user: &str) -> Vec<String> {
    let needle = format!("connection authorized: user={user} ");
    log.lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_owned)
        .collect()
}

fn account(name: &str) -> String {
    format!(
        "  {name}:\n    database: main\n    grants:\n\
         \x20     - {{ schema: public, privileges: [USAGE] }}\n\
         \x20     - {{ schema: public, tables: [orders], privileges: [SELECT] }}\n"
    )
}

/// A test database on the TLS cluster, which credrotd reaches with
/// `sslmode=verify-full&sslrootcert=<test CA>`.
async fn setup() -> TestDb {
    let db = TestDb::new_on(&verified_cluster_url()).await;
    assert!(
        db.url.contains("?sslmode=verify-full&sslrootcert=/"),
        "credrotd's url: {}",
        db.url
    );
    db.exec("CREATE TABLE public.orders (id int)").await;
    db
}

/// A self-signed CA named `cn` of the test's own (not the one that signed the
/// server's certificate, even under that one's name: `scripts/lib/pg.sh`
/// names it "credrotd test CA ca"), made with openssl as the real one is.
fn another_ca(dir: &Path, cn: &str) -> PathBuf {
    let file = cn.replace(' ', "-");
    let pem = dir.join(format!("{file}.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .arg("-subj")
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(dir.join(format!("{file}.key")))
        .arg("-out")
        .arg(&pem)
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl: {}", output_text(&out));
    pem
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotates_over_verified_tls_and_the_verify_login_uses_it() {
    let db = setup().await;
    let a = db.name("etl");
    let path = db.write_inventory(&account(&a));
    let out = run_credrotd(&["rotate", &a], &path);
    assert!(out.status.success(), "{}", output_text(&out));
    let p = db.published(&a);
    assert_eq!(p.version, 1);

    // The verify login (the new credential's first login, by credrotd) came in
    // over TLS, as did every connection of credrotd's admin.
    let log = server_log();
    let verify: Vec<String> = authorized(&log, &p.username)
        .into_iter()
        .filter(|l| l.contains("application_name=credrotd-verify"))
        .collect();
    assert_eq!(verify.len(), 1, "the verify login in the log: {verify:#?}");
    assert!(verify[0].contains(" SSL enabled ("), "{}", verify[0]);
    let admin = authorized(&log, &db.admin_user);
    assert!(!admin.is_empty(), "credrotd's admin connected");
    for line in &admin {
        assert!(line.contains(" SSL enabled ("), "{line}");
    }

    // The credential works for a consumer, over TLS.
    let mut c = db
        .login(&p.username, p.password.expose())
        .await
        .expect("the published credential logs in");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut c)
        .await
        .unwrap();
    // Read by the superuser: the login runs as its scoped role (`SET role`),
    // which may not see its own session's details.
    assert!(
        db.query_bool(&format!("SELECT ssl FROM pg_stat_ssl WHERE pid = {pid}"))
            .await,
        "the server's pg_stat_ssl shows the consumer's session over TLS"
    );
    c.close().await.unwrap();

    // The server takes nothing but TLS over TCP, so no login above can have
    // been in cleartext.
    let (cluster, _) = pg_tls();
    let port = PgConnectOptions::from_str(&cluster).unwrap().get_port();
    let plain = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .database(&db.dbname)
        .username(&p.username)
        .password(p.password.expose())
        .ssl_mode(PgSslMode::Disable)
        .connect()
        .await;
    let err = plain
        .expect_err("a login without TLS is refused")
        .to_string();
    assert!(err.contains("no encryption"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_fails_verification_is_refused_before_anything_changes() {
    let db = setup().await;
    let a = db.name("etl");
    let (_, ca) = pg_tls();
    let other = another_ca(db.dir.path(), "another test CA");
    let impostor = another_ca(db.dir.path(), "credrotd test CA ca");
    let cases = [
        (
            "a certificate another CA signed",
            db.url
                .replace(&ca.display().to_string(), &other.display().to_string()),
            "invalid peer certificate: UnknownIssuer",
        ),
        (
            "a CA of the same name as the server's but another key",
            db.url
                .replace(&ca.display().to_string(), &impostor.display().to_string()),
            "invalid peer certificate: BadSignature",
        ),
        (
            "a certificate for another name (127.0.0.2 is not in it)",
            db.url.replace("@127.0.0.1:", "@127.0.0.2:"),
            "invalid peer certificate: certificate not valid for name \"127.0.0.2\"",
        ),
        (
            "no TLS at all (the server refuses it)",
            db.url.replace("sslmode=verify-full", "sslmode=disable"),
            "no encryption",
        ),
    ];
    for (what, url, needle) in cases {
        assert_ne!(url, db.url, "{what}: the url changed");
        let path = db.write_inventory(&account(&a));
        let yaml = std::fs::read_to_string(&path)
            .unwrap()
            .replace(&db.url, &url);
        std::fs::write(&path, yaml).unwrap();
        let out = run_credrotd(&["rotate", &a], &path);
        let text = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {text}");
        assert!(
            text.contains(needle),
            "{what}: expected {needle:?} in:\n{text}"
        );

        // Nothing was created, published or recorded as current.
        assert!(
            db.roles().await.is_empty(),
            "{what}: {:?}",
            db.roles().await
        );
        assert!(
            !db.secrets_dir().join(format!("{a}.json")).exists(),
            "{what}: nothing is published"
        );
        let out = run_credrotd(&["status", "--format", "json"], &path);
        assert!(out.status.success(), "{what}: {}", output_text(&out));
        let rows: Vec<credrotd::api::AccountStatus> = serde_json::from_slice(&out.stdout).unwrap();
        let row = rows.iter().find(|r| r.account == a).expect("status row");
        assert!(row.current.is_none(), "{what}: no current credential");
    }
    // credrotd's admin never got as far as authentication: its password did
    // not go to a server that failed verification.
    assert_eq!(
        authorized(&server_log(), &db.admin_user),
        Vec::<String>::new()
    );
}

/// `check` (no network): an inventory with database `orders` at `url`; the
/// url is on line 8, its value at column 10.
fn check_inventory(dir: &Path, environment: &str, engine: &str, url: &str) -> (bool, String) {
    let path = dir.join(format!("{environment}.yaml"));
    std::fs::write(
        &path,
        format!(
            "version: 1\nenvironment: {environment}\nstate: sqlite://{d}/state.db\n\
             defaults: {{ schedule: \"0 0 3 * * *\", overlap: 1h, store: local }}\n\
             databases:\n  orders:\n    engine: {engine}\n    url: {url}\n\
             \x20   password_file: /run/credentials/credrotd.service/orders\n\
             stores:\n  local: {{ kind: file, dir: {d}/secrets, mode: \"0400\" }}\n\
             accounts:\n  etl:\n    database: orders\n    purpose: Nightly ETL\n    owner: data\n\
             \x20   grants:\n      - {{ schema: orders, privileges: [{privilege}] }}\n",
            d = dir.display(),
            privilege = if engine == "postgres" {
                "USAGE"
            } else {
                "SELECT"
            },
        ),
    )
    .unwrap();
    let out = run_credrotd(&["check"], &path);
    let text = output_text(&out).replace(&path.display().to_string(), "inv.yaml");
    (out.status.success(), text)
}

#[test]
fn check_refuses_an_unverified_database_on_another_host_in_production_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let remote = "postgres://credrotd_admin@db1.internal:5432/orders";
    let (ok, text) = check_inventory(d, "production", "postgres", remote);
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "inv.yaml:8:10: error: database \"orders\": the connection to \"db1.internal\" \
             is not verified TLS: the url sets no sslmode"
        ),
        "{text}"
    );
    assert!(
        text.contains("add sslmode=verify-full to the url"),
        "{text}"
    );
    for env in ["staging", "development"] {
        let (ok, text) = check_inventory(d, env, "postgres", remote);
        assert!(ok, "{text}");
        assert!(
            text.contains(
                "inv.yaml:8:10: warning: production would refuse this: database \"orders\": \
                 the connection to \"db1.internal\" is not verified TLS"
            ),
            "{env}: {text}"
        );
    }
    // sqlx's verify-ca checks no name and trusts the system's CAs as well.
    let (ok, text) = check_inventory(
        d,
        "production",
        "postgres",
        &format!("{remote}?sslmode=verify-ca&sslrootcert=/etc/credrotd/ca.pem"),
    );
    assert!(
        !ok && text.contains("inv.yaml:8:10: error:")
            && text.contains("verify-ca checks no host name"),
        "{text}"
    );
    let (ok, text) = check_inventory(
        d,
        "production",
        "mariadb",
        "mariadb://credrotd_admin@db2.internal:3306/orders?ssl-mode=REQUIRED",
    );
    assert!(
        !ok && text.contains("inv.yaml:8:10: error:")
            && text.contains("add ssl-mode=VERIFY_IDENTITY"),
        "{text}"
    );
    // Verified TLS, loopback and a Unix socket pass in production.
    for url in [
        format!("{remote}?sslmode=verify-full&sslrootcert=/etc/credrotd/ca.pem"),
        "postgres://credrotd_admin@127.0.0.1:5432/orders".to_owned(),
        "postgres://credrotd_admin@localhost/orders".to_owned(),
        "postgres://credrotd_admin@%2Frun%2Fpostgresql/orders".to_owned(),
    ] {
        let (ok, text) = check_inventory(d, "production", "postgres", &url);
        assert!(ok && !text.contains("TLS"), "{url}: {text}");
    }
}
