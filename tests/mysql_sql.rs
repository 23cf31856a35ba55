//! The MySQL/MariaDB quoting (`engine::mysql::sql`) and password hashes
//! (`engine::mysql::password`) against a real MariaDB: hostile names round-trip
//! exactly through literals, databases, tables, accounts and roles without
//! creating anything else; `native_password` is the server's `PASSWORD()`, logs in,
//! and keeps the plaintext out of the general and binary logs.
//!
//! Needs `CREDROTD_TEST_MYSQL_URL` (and the log paths) from `./scripts/test`, which
//! starts a throwaway MariaDB 10.11 with both logs on.

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;

use credrotd::engine::mysql::password::native_password;
use credrotd::engine::mysql::sql::{ident, role, string, user, SQL_MODE};
use credrotd::secret::Secret;
use rand::Rng;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{Connection, Executor, Row};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run these tests through ./scripts/test, which starts a \
             throwaway MariaDB and exports CREDROTD_TEST_MYSQL_URL, \
             CREDROTD_TEST_MYSQL_GENERAL_LOG and CREDROTD_TEST_MYSQL_BINLOG"
        )
    })
}

fn url() -> String {
    env("CREDROTD_TEST_MYSQL_URL")
}

/// A connection as the test DBA with credrotd's session mode, as the engine opens it.
async fn connect() -> MySqlConnection {
    let mut conn = MySqlConnection::connect(&url())
        .await
        .expect("connect to the test MariaDB as its DBA");
    let set = format!("SET SESSION sql_mode = {}", string(SQL_MODE).unwrap());
    conn.execute(set.as_str()).await.expect("pin sql_mode");
    let mode: String = conn
        .fetch_one("SELECT @@SESSION.sql_mode")
        .await
        .unwrap()
        .get(0);
    let want: BTreeSet<&str> = SQL_MODE.split(',').collect();
    assert_eq!(mode.split(',').collect::<BTreeSet<_>>(), want);
    conn
}

/// Runs one statement as text (never prepared: no arguments are bound).
async fn exec(conn: &mut MySqlConnection, sql: &str) {
    conn.execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql:?}: {e}"));
}

/// A tag unique to one test run, to keep each test's objects apart.
fn tag() -> String {
    format!("crq{:08x}", rand::thread_rng().gen::<u32>())
}

/// Drops what a test created, also when it fails half-way: the statements
/// (`… IF EXISTS`) run on a fresh connection, from a thread of its own, when the
/// guard goes out of scope.
struct Cleanup(Vec<String>);

impl Cleanup {
    fn push(&mut self, statement: String) {
        self.0.push(statement);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let statements = std::mem::take(&mut self.0);
        if statements.is_empty() {
            return;
        }
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleanup");
            runtime.block_on(async {
                let mut conn = connect().await;
                for statement in statements.iter().rev() {
                    if let Err(e) = conn.execute(statement.as_str()).await {
                        eprintln!("cleanup {statement:?} failed: {e}");
                    }
                }
            });
        })
        .join();
        if done.is_err() {
            eprintln!("cleanup panicked; objects may be left on the test server");
        }
    }
}

/// Hostile names, in the spirit of the unit tests' table. Each test uses those
/// its quoting function accepts; the refusals are checked exactly there.
fn hostile() -> Vec<String> {
    let mut names: Vec<String> = [
        "plain",
        "it's",
        "'",
        "''",
        "x'; DROP USER root; --",
        "x'; drop user root; --",
        "back`tick",
        "`",
        "``; DROP DATABASE mysql; --",
        "back\\slash",
        "trailing\\",
        "\\'",
        "\\",
        "\\\\'",
        "100%",
        "%",
        "_",
        "a_b%c",
        "user@host",
        "'@'%",
        "-- comment",
        "#hash",
        "/* c */",
        "/*!50000 DROP",
        "*/",
        "a;b",
        ";",
        "\"dq\"",
        "line\nbreak",
        "cr\r\ntab\tin",
        "tab\t",
        "vt\x0b",
        "nbsp\u{a0}",
        "ideographic\u{3000}",
        "esc\u{1b}[31m",
        " leading",
        "dot.slash/",
        "..",
        "日本語",
        "Ωmega'é",
        "key🔑",
        "none",
        "PUBLIC",
        "#mysql50#x",
        "",
        "trailing ",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Names at the length limits (and one past, which the functions refuse).
    for n in [64, 65, 80, 81, 255, 256] {
        names.push("a".repeat(n));
    }
    names.push("é".repeat(64));
    names.push("é".repeat(80));
    names
}

/// Names unique to `run` made of each hostile name, which is put at the start and
/// at the end (so that both leading and trailing characters reach the server),
/// plus names of exactly `limit` characters (ASCII and two-byte).
fn unique_names(run: &str, limit: usize) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, x) in hostile().iter().enumerate() {
        names.insert(format!("{run}{i:02}{x}"));
        names.insert(format!("{x}{run}{i:02}"));
    }
    let pad = limit - run.len() - 1;
    names.insert(format!("{run}a{}", "a".repeat(pad)));
    names.insert(format!("{run}é{}", "é".repeat(pad)));
    names
}

/// Every string the server holds in a one-column query's result, decoded as text.
async fn strings(conn: &mut MySqlConnection, sql: &str) -> Vec<String> {
    conn.fetch_all(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql:?}: {e}"))
        .iter()
        .map(|row| text(row, 0))
        .collect()
}

/// A text column as UTF-8, whatever type the server reports for it (the grant
/// tables' `CHAR … utf8mb3_bin` columns come as BINARY): the exact bytes count.
fn text(row: &sqlx::mysql::MySqlRow, index: usize) -> String {
    String::from_utf8(row.get::<Vec<u8>, _>(index)).expect("UTF-8 text from the server")
}

/// The names of the server's databases that are `run`'s or no test's.
async fn schemata(conn: &mut MySqlConnection, run: &str) -> BTreeSet<String> {
    strings(conn, "SELECT schema_name FROM information_schema.schemata")
        .await
        .into_iter()
        .filter(|name| mine(name, run))
        .collect()
}

/// Whether `name` is this run's or no test's: the other tests of this binary run
/// at the same time and tag their objects `crq…`, so those are left out of a
/// before/after comparison, and anything else that appears is caught.
fn mine(name: &str, run: &str) -> bool {
    name.contains(run) || !name.contains("crq")
}

/// Every (User, Host) pair of the server's accounts and roles that is `run`'s or
/// no test's.
async fn accounts(conn: &mut MySqlConnection, run: &str) -> BTreeSet<(String, String)> {
    conn.fetch_all("SELECT User, Host FROM mysql.user")
        .await
        .expect("read mysql.user")
        .iter()
        .map(|row| (text(row, 0), text(row, 1)))
        .filter(|(name, host)| mine(name, run) && mine(host, run))
        .collect()
}

#[tokio::test]
async fn string_literals_round_trip_exactly() {
    let mut conn = connect().await;
    let mut inputs = hostile();
    inputs.push("x".repeat(70_000));
    inputs.push("'".repeat(1000) + "\\");
    let mut tested = 0;
    for x in &inputs {
        let Ok(literal) = string(x) else {
            assert!(x.contains('\0'));
            continue;
        };
        let sql = format!("SELECT {literal} AS v");
        let rows = conn
            .fetch_all(sql.as_str())
            .await
            .unwrap_or_else(|e| panic!("{sql:?}: {e}"));
        assert_eq!(rows.len(), 1, "{x:?}: one row");
        assert_eq!(rows[0].len(), 1, "{x:?}: one column");
        assert_eq!(&text(&rows[0], 0), x, "{x:?} round-trips");
        tested += 1;
    }
    assert!(tested >= inputs.len() - 1);
    // The mode is what makes a trailing backslash safe: the same literal would
    // leave the string open under the server's default mode.
    let (a, b) = (string("a\\").unwrap(), string("b").unwrap());
    let values = strings(&mut conn, &format!("SELECT CONCAT({a}, {b})")).await;
    assert_eq!(values, ["a\\b"]);
}

#[tokio::test]
async fn identifiers_round_trip_through_databases_and_tables() {
    let mut conn = connect().await;
    let run = tag();
    let mut cleanup = Cleanup(Vec::new());
    let before = schemata(&mut conn, &run).await;

    // Tables with the exact hostile names, inside a database of this test's own.
    let home = format!("{run}_tables");
    let home_q = ident(&home).unwrap();
    cleanup.push(format!("DROP DATABASE IF EXISTS {home_q}"));
    exec(&mut conn, &format!("CREATE DATABASE {home_q}")).await;
    let tables: BTreeSet<String> = hostile().into_iter().filter(|x| ident(x).is_ok()).collect();
    assert!(tables.len() > 30, "most hostile names are identifiers");
    for x in &tables {
        let sql = format!("CREATE TABLE {home_q}.{} (id INT)", ident(x).unwrap());
        exec(&mut conn, &sql).await;
    }
    let sql = format!(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = {}",
        string(&home).unwrap()
    );
    let found: BTreeSet<String> = strings(&mut conn, &sql).await.into_iter().collect();
    assert_eq!(found, tables, "the tables are exactly the names given");

    // Databases: the hostile part at either end of a unique name, and names of
    // exactly the 64-character limit.
    let databases: BTreeSet<String> = unique_names(&run, 64)
        .into_iter()
        .filter(|name| ident(name).is_ok())
        .collect();
    for name in &databases {
        let quoted = ident(name).unwrap();
        cleanup.push(format!("DROP DATABASE IF EXISTS {quoted}"));
        exec(&mut conn, &format!("CREATE DATABASE {quoted}")).await;
    }
    let after = schemata(&mut conn, &run).await;
    let mut expected = before.clone();
    expected.insert(home.clone());
    expected.extend(databases.iter().cloned());
    let missing: Vec<_> = expected.difference(&after).collect();
    let unexpected: Vec<_> = after.difference(&expected).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "exactly the named databases exist: missing {missing:?}, unexpected {unexpected:?}"
    );
    assert!(databases
        .iter()
        .any(|d| d.chars().count() == 64 && !d.is_ascii()));
    for name in &databases {
        exec(
            &mut conn,
            &format!("DROP DATABASE {}", ident(name).unwrap()),
        )
        .await;
    }
    exec(&mut conn, &format!("DROP DATABASE {home_q}")).await;
    assert_eq!(
        schemata(&mut conn, &run).await,
        before,
        "everything was dropped"
    );
}

#[tokio::test]
async fn accounts_and_roles_round_trip_exactly() {
    let mut conn = connect().await;
    let run = tag();
    let mut cleanup = Cleanup(Vec::new());
    let before = accounts(&mut conn, &run).await;

    // Users: a hostile name (made unique at either end) on a host of this run, and
    // the exact hostile string as the host of a user of this run.
    let host = format!("{run}.invalid");
    let mut candidates: BTreeSet<(String, String)> = unique_names(&run, 80)
        .into_iter()
        .map(|name| (name, host.clone()))
        .collect();
    for (i, x) in hostile().into_iter().enumerate() {
        candidates.insert((format!("{run}h{i:02}"), x));
    }
    let long_host = format!("{run}.{}", "h".repeat(254 - run.len()));
    candidates.insert((format!("{run}long"), long_host));
    let mut created = BTreeSet::new();
    for (name, host) in candidates {
        let Ok(account) = user(&name, &host) else {
            continue;
        };
        cleanup.push(format!("DROP USER IF EXISTS {account}"));
        exec(&mut conn, &format!("CREATE USER {account} ACCOUNT LOCK")).await;
        created.insert((name, host));
    }
    assert!(created.iter().any(|(_, h)| h.chars().count() == 255));
    assert!(created.iter().any(|(n, _)| n.chars().count() == 80));
    // An anonymous account too, on a host nobody connects from.
    let anonymous = (String::new(), format!("{run}.anonymous.invalid"));
    let account = user(&anonymous.0, &anonymous.1).unwrap();
    cleanup.push(format!("DROP USER IF EXISTS {account}"));
    exec(&mut conn, &format!("CREATE USER {account} ACCOUNT LOCK")).await;
    created.insert(anonymous);

    // Roles: created, granted to a user, made its default role, all by role().
    let grantee = user(&format!("{run}grantee"), "%").unwrap();
    cleanup.push(format!("DROP USER IF EXISTS {grantee}"));
    exec(&mut conn, &format!("CREATE USER {grantee} ACCOUNT LOCK")).await;
    let mut roles = BTreeSet::new();
    for name in unique_names(&run, 80) {
        {
            let Ok(quoted) = role(&name) else { continue };
            cleanup.push(format!("DROP ROLE IF EXISTS {quoted}"));
            exec(&mut conn, &format!("CREATE ROLE {quoted}")).await;
            exec(&mut conn, &format!("GRANT {quoted} TO {grantee}")).await;
            // MariaDB's syntax; MySQL 8 says `SET DEFAULT ROLE … TO …`.
            exec(
                &mut conn,
                &format!("SET DEFAULT ROLE {quoted} FOR {grantee}"),
            )
            .await;
            let sql = format!(
                "SELECT default_role FROM mysql.user WHERE User = {} AND Host = '%'",
                string(&format!("{run}grantee")).unwrap()
            );
            assert_eq!(
                strings(&mut conn, &sql).await,
                [name.as_str()],
                "default role"
            );
            roles.insert(name);
        }
    }
    let sql = format!(
        "SELECT Role FROM mysql.roles_mapping WHERE User = {}",
        string(&format!("{run}grantee")).unwrap()
    );
    let granted: BTreeSet<String> = strings(&mut conn, &sql).await.into_iter().collect();
    assert_eq!(granted, roles, "each role was granted by its exact name");

    let after = accounts(&mut conn, &run).await;
    let mut expected = before.clone();
    expected.extend(created.iter().cloned());
    expected.insert((format!("{run}grantee"), "%".into()));
    expected.extend(roles.iter().map(|r| (r.clone(), String::new())));
    let missing: Vec<_> = expected.difference(&after).collect();
    let unexpected: Vec<_> = after.difference(&expected).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "exactly the named accounts and roles exist: missing {missing:?}, unexpected {unexpected:?}"
    );
    assert!(
        created.len() > 80 && roles.len() > 50,
        "{} {}",
        created.len(),
        roles.len()
    );

    for (name, host) in &created {
        exec(
            &mut conn,
            &format!("DROP USER {}", user(name, host).unwrap()),
        )
        .await;
    }
    exec(&mut conn, &format!("DROP USER {grantee}")).await;
    for name in &roles {
        exec(&mut conn, &format!("DROP ROLE {}", role(name).unwrap())).await;
    }
    assert_eq!(
        accounts(&mut conn, &run).await,
        before,
        "everything was dropped"
    );
}

#[tokio::test]
async fn native_password_is_the_servers_password_function() {
    let mut conn = connect().await;
    let mut passwords: Vec<Secret> = (0..20).map(|_| Secret::generate()).collect();
    // Random text of any Unicode scalar but NUL, and the hostile names as passwords.
    let mut rng = rand::thread_rng();
    for _ in 0..20 {
        let len = rng.gen_range(1..80);
        let text: String = (0..len)
            .map(|_| loop {
                let c: char = rng.gen();
                if c != '\0' {
                    break c;
                }
            })
            .collect();
        passwords.push(Secret::new(text));
    }
    passwords.extend(
        hostile()
            .into_iter()
            .filter(|x| !x.is_empty())
            .map(Secret::new),
    );
    for password in &passwords {
        let sql = format!("SELECT PASSWORD({})", string(password.expose()).unwrap());
        let server = strings(&mut conn, &sql).await;
        assert_eq!(server, [native_password(password)]);
    }
    // The one deliberate difference: the server hashes '' to '' (no password).
    let server = strings(&mut conn, "SELECT PASSWORD('')").await;
    assert_eq!(server, [""]);
    assert_eq!(native_password(&Secret::new(String::new())).len(), 41);
}

/// Connect options for `name` with `password`, on the test server, with no
/// default database (the new account has no privileges on any).
fn login_options(name: &str, password: &str) -> MySqlConnectOptions {
    let url = url::Url::parse(&url()).expect("CREDROTD_TEST_MYSQL_URL is a URL");
    MySqlConnectOptions::from_str("mysql://localhost")
        .expect("options")
        .host(url.host_str().expect("a host"))
        .port(url.port().unwrap_or(3306))
        .username(name)
        .password(password)
}

async fn login(name: &str, password: &str) -> Result<String, sqlx::Error> {
    let mut conn = MySqlConnection::connect_with(&login_options(name, password)).await?;
    let who = text(&conn.fetch_one("SELECT CURRENT_USER()").await?, 0);
    conn.close().await?;
    Ok(who)
}

fn assert_denied(result: Result<String, sqlx::Error>, what: &str) {
    match result {
        Err(sqlx::Error::Database(e)) => {
            assert!(e.message().contains("Access denied"), "{what}: {e}");
        }
        other => panic!("{what}: expected access denied, got {other:?}"),
    }
}

/// Every file of the binary log (`BASE.000001`, …), concatenated.
fn binlog_bytes() -> Vec<u8> {
    let base = env("CREDROTD_TEST_MYSQL_BINLOG");
    let base = Path::new(&base);
    let dir = base.parent().expect("the binary log's directory");
    let stem = base
        .file_name()
        .and_then(|s| s.to_str())
        .expect("the binary log's base name");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("read the binary log's directory")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|s| s.to_str())
                .and_then(|s| s.strip_prefix(stem)?.strip_prefix('.'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no binary log files at {base:?}");
    files
        .iter()
        .flat_map(|f| std::fs::read(f).expect("read a binary log file"))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn hashed_password_logs_in_and_no_log_holds_the_plaintext() {
    let mut conn = connect().await;
    let run = tag();
    let mut cleanup = Cleanup(Vec::new());
    let name = format!("{run}login");
    let account = user(&name, "%").unwrap();
    cleanup.push(format!("DROP USER IF EXISTS {account}"));

    // This password is never sent to the server in SQL: only its hash is.
    let password = Secret::generate();
    let hash = native_password(&password);
    let sql = format!(
        "CREATE USER {account} IDENTIFIED BY PASSWORD {}",
        string(&hash).unwrap()
    );
    exec(&mut conn, &sql).await;

    let who = login(&name, password.expose())
        .await
        .unwrap_or_else(|e| panic!("{name} logs in with its password: {e}"));
    assert_eq!(who, format!("{name}@%"));
    let wrong = Secret::generate();
    assert_denied(login(&name, wrong.expose()).await, "a wrong password");
    assert_denied(login(&name, "").await, "an empty password");

    // The hash of an empty password is an empty password for a client that sends
    // a scramble for it, as sqlx does (see native_password): never use one.
    let empty_name = format!("{run}empty");
    let empty = user(&empty_name, "%").unwrap();
    cleanup.push(format!("DROP USER IF EXISTS {empty}"));
    let empty_hash = native_password(&Secret::new(String::new()));
    let sql = format!(
        "CREATE USER {empty} IDENTIFIED BY PASSWORD {}",
        string(&empty_hash).unwrap()
    );
    exec(&mut conn, &sql).await;
    let who = login(&empty_name, "").await;
    assert_eq!(
        who.ok(),
        Some(format!("{empty_name}@%")),
        "sqlx logs in with ''"
    );
    assert_denied(
        login(&empty_name, "x").await,
        "another password on an empty hash",
    );

    exec(&mut conn, &format!("DROP USER {account}")).await;
    exec(&mut conn, &format!("DROP USER {empty}")).await;

    let general =
        std::fs::read(env("CREDROTD_TEST_MYSQL_GENERAL_LOG")).expect("read the general log");
    let binlog = binlog_bytes();
    let plaintext = password.expose().as_bytes();
    for (log, bytes) in [("general log", &general), ("binary log", &binlog)] {
        assert!(
            contains(bytes, hash.as_bytes()),
            "the {log} records the hash"
        );
        assert!(
            contains(bytes, name.as_bytes()),
            "the {log} records the account"
        );
        assert!(
            !contains(bytes, plaintext),
            "the {log} holds the plaintext password"
        );
        assert!(
            !contains(bytes, wrong.expose().as_bytes()),
            "the {log} holds a password tried"
        );
    }
}
