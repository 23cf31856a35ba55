//! The saga against a real MariaDB that checks passwords and logs every
//! statement (general log) and every change (binary log): every strategy,
//! exact privileges at login through the default role, overlap, revocation that
//! ends live sessions, drift, the DEFINER case, hostile names, crash recovery
//! and secret hygiene. Run through `./scripts/test`, which starts the server.
//! MySQL 8 is not installable on these machines: its statements are checked as
//! generated SQL in the engine's unit tests.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::mysql::{mysql_logs, MyDb};
use common::{assert_no_secret, read_all};
use credrotd::clock::{SharedClock, SystemClock};
use credrotd::ledger::CredState;
use credrotd::rotation::{self, RotationError};
use sqlx::{Connection, Executor};

/// Runs `SELECT SLEEP(30)` on the session; whether it was cut short by an error.
async fn sleep_30(mut session: sqlx::MySqlConnection) -> (bool, sqlx::MySqlConnection) {
    let r = session.execute("SELECT SLEEP(30)").await;
    (r.is_err(), session)
}

fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// Tables and a routine the tests grant on, in the test's database.
async fn setup(db: &MyDb) {
    db.exec(
        "CREATE TABLE orders (id INT PRIMARY KEY AUTO_INCREMENT, total INT NOT NULL);
         CREATE TABLE customers (id INT PRIMARY KEY AUTO_INCREMENT, name TEXT);
         CREATE TABLE payroll (id INT PRIMARY KEY, salary INT);
         CREATE TABLE events (id INT PRIMARY KEY AUTO_INCREMENT, kind TEXT);
         INSERT INTO orders (total) VALUES (1), (2);
         CREATE FUNCTION add_one(n INT) RETURNS INT DETERMINISTIC RETURN n + 1;
         CREATE FUNCTION purge_all() RETURNS INT DETERMINISTIC RETURN 0",
    )
    .await;
}

fn etl(db: &MyDb, name: &str, strategy: &str, extra: &str) -> String {
    let schema = &db.dbname;
    format!(
        "  {name}:\n    database: main\n    strategy: {strategy}\n{extra}    grants:\n\
         \x20     - {{ schema: {schema}, tables: [orders], privileges: [SELECT] }}\n\
         \x20     - {{ schema: {schema}, tables: [events], privileges: [SELECT, INSERT] }}\n\
         \x20     - {{ schema: {schema}, functions: [add_one], privileges: [EXECUTE] }}\n"
    )
}

/// The login can do exactly what `etl()` grants, through its default role.
async fn assert_exact_privileges(db: &MyDb, user: &str, password: &str, scoped: &str) {
    let mut c = db
        .login(user, password)
        .await
        .unwrap_or_else(|e| panic!("{user} logs in: {e}"));
    let role: Option<String> = sqlx::query_scalar("SELECT CURRENT_ROLE()")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(
        role.as_deref(),
        Some(scoped),
        "the scoped role is active at login"
    );
    for sql in [
        "SELECT COUNT(*) FROM orders",
        "INSERT INTO events (kind) VALUES ('x')",
        "SELECT COUNT(*) FROM events",
        "SELECT add_one(1)",
    ] {
        sqlx::raw_sql(sql)
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{user} should be allowed: {sql}: {e}"));
    }
    for sql in [
        "UPDATE events SET kind = 'y'",
        "DELETE FROM events",
        "SELECT COUNT(*) FROM customers",
        "SELECT COUNT(*) FROM payroll",
        "INSERT INTO orders (total) VALUES (3)",
        "CREATE TABLE sneaky (id INT)",
        "SELECT purge_all()",
        "SELECT COUNT(*) FROM mysql.user",
    ] {
        let err = sqlx::raw_sql(sql).execute(&mut c).await.expect_err(sql);
        let msg = err.to_string();
        assert!(
            msg.contains("denied"),
            "{user}: {sql}: expected access denied, got {msg}"
        );
    }
    c.close().await.unwrap();
}

async fn locked(db: &MyDb, user: &str) -> bool {
    db.query_strings(&format!(
        "SELECT IF(JSON_VALUE(Priv, '$.account_locked') IN ('1', 'true'), 'Y', 'N') FROM mysql.global_priv WHERE User = '{user}'"
    ))
    .await
    .iter()
    .all(|l| l == "Y")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_login_has_exactly_the_declared_privileges_through_its_default_role() {
    let db = MyDb::new().await;
    setup(&db).await;
    let name = db.name("etl");
    let ctx = db
        .context(&etl(&db, &name, "ephemeral", ""), system())
        .await;
    let account = ctx.account(&name).unwrap().clone();
    let r = rotation::rotate(&ctx, &account).await.unwrap();
    assert!(
        r.username.starts_with(&format!("{name}_")) && r.username.len() == name.len() + 15,
        "{}",
        r.username
    );
    let p = db.published(&name);
    assert_eq!(p.username, r.username);
    assert_exact_privileges(&db, &p.username, p.password.expose(), &name).await;

    // One user for the default host, a role holding the grants; the login
    // holds none of its own and carries the expiry backstop.
    assert_eq!(
        db.users().await,
        vec![format!("{name}@"), format!("{}@%", p.username)]
    );
    let grants = db
        .query_strings(&format!("SHOW GRANTS FOR '{}'@'%'", p.username))
        .await
        .join("\n");
    assert!(
        !grants.contains("ON `"),
        "the login holds no grant: {grants}"
    );
    let lifetime = db
        .query_i64(&format!(
            "SELECT CAST(JSON_VALUE(Priv, '$.password_lifetime') AS SIGNED) FROM mysql.global_priv WHERE User = '{}'",
            p.username
        ))
        .await;
    assert!(
        (1..=2).contains(&lifetime),
        "PASSWORD EXPIRE INTERVAL: {lifetime}"
    );
    // The marker records what credrotd made, with the intended expiry.
    let kinds = db
        .query_strings(&format!(
            "SELECT CONCAT(kind, ' ', account) FROM credrotd.managed WHERE name IN ('{name}', '{}') ORDER BY kind",
            p.username
        ))
        .await;
    assert_eq!(
        kinds,
        vec![format!("login {name}"), format!("scoped {name}")]
    );
    // An event locks the login at its expiry (the event scheduler is on).
    let events = db
        .query_i64(&format!(
            "SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = 'credrotd' AND DEFINER LIKE '{}@%'",
            db.admin_user
        ))
        .await;
    assert_eq!(events, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_overlaps_then_locks_the_previous_login() {
    let db = MyDb::new().await;
    setup(&db).await;
    let name = db.name("rep");
    let ctx = db
        .context(
            &etl(&db, &name, "alternating", "    overlap: 30m\n"),
            system(),
        )
        .await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let first = db.published(&name);
    assert_eq!(first.username, format!("{name}_a"));
    assert_exact_privileges(&db, &first.username, first.password.expose(), &name).await;

    rotation::rotate(&ctx, &account).await.unwrap();
    let second = db.published(&name);
    assert_eq!(second.username, format!("{name}_b"));
    db.login(&first.username, first.password.expose())
        .await
        .expect("the previous login works during the overlap");
    assert_exact_privileges(&db, &second.username, second.password.expose(), &name).await;

    let prev = ctx
        .ledger
        .live(&name)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.state == CredState::Retiring)
        .unwrap();
    rotation::retire(&ctx, &account, &prev, false)
        .await
        .unwrap();
    assert!(
        db.login(&first.username, first.password.expose())
            .await
            .is_err(),
        "the previous login is refused after the overlap"
    );
    assert!(locked(&db, &first.username).await);
    db.login(&second.username, second.password.expose())
        .await
        .expect("current still works");

    // The third rotation unlocks `_a` with a fresh password.
    rotation::rotate(&ctx, &account).await.unwrap();
    let third = db.published(&name);
    assert_eq!(third.username, first.username);
    assert!(db
        .login(&first.username, first.password.expose())
        .await
        .is_err());
    assert_exact_privileges(&db, &third.username, third.password.expose(), &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_user_gets_a_new_password_in_place_without_overlap_on_mariadb() {
    let db = MyDb::new().await;
    setup(&db).await;
    let name = db.name("legacy");
    let user = db.name("legacy_svc");
    db.exec(&format!(
        "CREATE USER '{user}'@'%' IDENTIFIED BY 'OriginalPassword-123456789'"
    ))
    .await;
    let accounts = etl(
        &db,
        &name,
        "static",
        &format!("    role: {user}\n    overlap: 0s\n"),
    );
    let ctx = db.context(&accounts, system()).await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let p = db.published(&name);
    assert_eq!(p.username, user);
    assert!(db.login(&user, "OriginalPassword-123456789").await.is_err());
    assert_exact_privileges(&db, &user, p.password.expose(), &name).await;
    rotation::rotate(&ctx, &account).await.unwrap();
    let p2 = db.published(&name);
    assert!(db.login(&user, p.password.expose()).await.is_err());
    db.login(&user, p2.password.expose()).await.unwrap();
    // A static user is never dropped, only its password changes.
    assert!(db.users().await.contains(&format!("{user}@%")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_locks_the_login_ends_its_sessions_and_drops_every_host_variant() {
    let db = MyDb::new().await;
    setup(&db).await;
    let name = db.name("rev");
    let hosts = "    hosts: [\"%\", \"127.0.0.1\"]\n";
    let ctx = db
        .context_with(
            hosts,
            &etl(&db, &name, "ephemeral", "    overlap: 30m\n"),
            system(),
        )
        .await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let v1 = db.published(&name);
    assert_eq!(
        db.users().await,
        vec![
            format!("{name}@"),
            format!("{}@%", v1.username),
            format!("{}@127.0.0.1", v1.username)
        ]
    );
    // A host variant added by hand is dropped with the others.
    db.exec(&format!(
        "CREATE USER '{}'@'10.9.9.9' ACCOUNT LOCK",
        v1.username
    ))
    .await;

    let session = db.login(&v1.username, v1.password.expose()).await.unwrap();
    let sleeper = tokio::spawn(sleep_30(session));
    tokio::time::sleep(Duration::from_millis(500)).await;

    rotation::rotate(&ctx, &account).await.unwrap();
    let prev = ctx
        .ledger
        .live(&name)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.state == CredState::Retiring)
        .unwrap();
    let started = std::time::Instant::now();
    rotation::retire(&ctx, &account, &prev, false)
        .await
        .unwrap();
    let (killed, _session) = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the SLEEP(30) session ends well before 30 s")
        .unwrap();
    assert!(killed, "the live session was killed");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        !db.users()
            .await
            .iter()
            .any(|u| u.starts_with(&format!("{}@", v1.username))),
        "every host variant is dropped: {:?}",
        db.users().await
    );
    assert!(db.login(&v1.username, v1.password.expose()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_revokes_what_was_added_behind_its_back() {
    let db = MyDb::new().await;
    setup(&db).await;
    let name = db.name("drift");
    let ctx = db
        .context(&etl(&db, &name, "ephemeral", ""), system())
        .await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let schema = &db.dbname;
    db.exec(&format!(
        "GRANT SELECT ON `{schema}`.customers TO '{name}';
         GRANT DELETE ON `{schema}`.events TO '{name}';
         GRANT UPDATE ON `{schema}`.* TO '{name}';
         GRANT SELECT ON `{schema}`.orders TO '{name}' WITH GRANT OPTION;
         GRANT EXECUTE ON FUNCTION `{schema}`.purge_all TO '{name}';
         GRANT FILE, PROCESS ON *.* TO '{name}';
         REVOKE INSERT ON `{schema}`.events FROM '{name}'"
    ))
    .await;
    rotation::rotate(&ctx, &account).await.unwrap();
    let p = db.published(&name);
    assert_exact_privileges(&db, &p.username, p.password.expose(), &name).await;
    let grants = db
        .query_strings(&format!("SHOW GRANTS FOR '{name}'"))
        .await
        .join("\n");
    assert!(!grants.contains("GRANT OPTION"), "{grants}");
    assert!(!grants.contains("UPDATE"), "{grants}");
    // A global privilege the least-privilege admin may not revoke (it holds no
    // grant option on it) is a stuck item naming the statement; once a DBA runs
    // it, nothing is left to do.
    let stuck = ctx.ledger.stuck_items(Some(&name)).await.unwrap();
    assert!(
        stuck
            .iter()
            .any(|s| s.subject.contains("ON *.* FROM") && s.subject.contains("FILE")),
        "{stuck:?}"
    );
    db.exec(&format!("REVOKE FILE, PROCESS ON *.* FROM '{name}'"))
        .await;
    // Reconciled: a plan now has nothing to do.
    let r = ctx.engines["main"]
        .reconcile(&account, false)
        .await
        .unwrap();
    assert!(r.changes.is_empty() && r.stuck.is_empty(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_is_a_definer_is_locked_and_kept_never_dropped() {
    let db = MyDb::new().await;
    setup(&db).await;
    let name = db.name("def");
    let schema = db.dbname.clone();
    let mut accounts = etl(
        &db,
        &name,
        "ephemeral",
        "    allow_ddl: true\n    overlap: 30m\n",
    );
    accounts.push_str(&format!(
        "      - {{ schema: {schema}, privileges: [CREATE VIEW, SHOW VIEW, SELECT] }}\n"
    ));
    let ctx = db.context(&accounts, system()).await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let v1 = db.published(&name);
    let mut c = db.login(&v1.username, v1.password.expose()).await.unwrap();
    c.execute("CREATE VIEW order_totals AS SELECT SUM(total) AS s FROM orders")
        .await
        .unwrap();
    c.close().await.unwrap();

    rotation::rotate(&ctx, &account).await.unwrap();
    let prev = ctx
        .ledger
        .live(&name)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.state == CredState::Retiring)
        .unwrap();
    rotation::retire(&ctx, &account, &prev, false)
        .await
        .unwrap();
    // Kept and locked; the view still works for the DBA; the ledger names why.
    assert!(db.users().await.contains(&format!("{}@%", v1.username)));
    assert!(locked(&db, &v1.username).await);
    assert!(db.login(&v1.username, v1.password.expose()).await.is_err());
    let stuck = ctx.ledger.stuck_items(Some(&name)).await.unwrap();
    assert!(
        stuck
            .iter()
            .any(|s| s.error.contains("DEFINER") && s.error.contains("order_totals")),
        "{stuck:?}"
    );
    // Once the view has another definer, the next attempt drops the login.
    db.exec("ALTER DEFINER = CURRENT_USER VIEW order_totals AS SELECT SUM(total) AS s FROM orders")
        .await;
    ctx.engines["main"]
        .drop_login(&account, &v1.username)
        .await
        .unwrap();
    assert!(!db.users().await.contains(&format!("{}@%", v1.username)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_object_names_and_hosts_never_change_a_statement() {
    let db = MyDb::new().await;
    let weird = ["we'ird", "back`tick", "semi;colon -- x", "back\\slash"];
    for t in weird {
        db.exec(&format!("CREATE TABLE `{}` (id INT)", t.replace('`', "``")))
            .await;
    }
    let name = db.name("odd");
    let list = weird
        .iter()
        .map(|t| format!("'{}'", t.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ");
    let accounts = format!(
        "  {name}:\n    database: main\n    grants:\n      - {{ schema: {}, tables: [{list}], privileges: [SELECT] }}\n",
        db.dbname
    );
    let hosts = "    hosts: [\"%\", \"10.0.0.%\", \"localhost\"]\n";
    let ctx = db.context_with(hosts, &accounts, system()).await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let p = db.published(&name);
    let mut c = db.login(&p.username, p.password.expose()).await.unwrap();
    for t in weird {
        c.execute(format!("SELECT COUNT(*) FROM `{}`", t.replace('`', "``")).as_str())
            .await
            .unwrap_or_else(|e| panic!("{t}: {e}"));
    }
    c.close().await.unwrap();
    let hosts_made = db
        .query_strings(&format!(
            "SELECT Host FROM mysql.user WHERE User = '{}' ORDER BY Host",
            p.username
        ))
        .await;
    assert_eq!(hosts_made, vec!["%", "10.0.0.%", "localhost"]);
    // Nothing but what was asked for exists.
    assert_eq!(db.users().await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_credrotd_did_not_create_is_never_taken_over() {
    let db = MyDb::new().await;
    setup(&db).await;
    let name = db.name("theirs");
    db.exec(&format!("CREATE ROLE '{name}'")).await;
    let ctx = db
        .context(&etl(&db, &name, "ephemeral", ""), system())
        .await;
    let account = ctx.account(&name).unwrap().clone();
    let err = rotation::rotate(&ctx, &account).await.unwrap_err();
    assert!(err.to_string().contains("not managed by credrotd"), "{err}");
    assert_eq!(db.users().await, vec![format!("{name}@")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_any_middle_state_is_finished_or_rolled_back() {
    let db = MyDb::new().await;
    setup(&db).await;
    for (i, state) in [
        CredState::Planned,
        CredState::Created,
        CredState::Verified,
        CredState::Published,
        CredState::Current,
    ]
    .into_iter()
    .enumerate()
    {
        let name = db.name(&format!("c{i}"));
        let accounts = etl(&db, &name, "ephemeral", "");
        let ctx = db.context(&accounts, system()).await;
        let account = ctx.account(&name).unwrap().clone();
        rotation::rotate(&ctx, &account).await.unwrap();
        let v1 = db.published(&name);

        let mut crashing = db.context(&accounts, system()).await;
        crashing.crash_after = Some(state);
        let err = rotation::rotate(&crashing, &account).await.unwrap_err();
        assert!(
            matches!(err, RotationError::Crash(s) if s == state),
            "{err}"
        );
        let v2 = crashing.ledger.credentials(&name).await.unwrap()[1].clone();

        let ctx = db.context(&accounts, system()).await;
        rotation::recover_account(&ctx, &account).await.unwrap();
        let creds = ctx.ledger.credentials(&name).await.unwrap();
        assert!(
            creds.iter().all(|c| !c.state.is_middle()),
            "{state}: {creds:?}"
        );
        let held = db.published(&name);
        match state {
            CredState::Planned | CredState::Created | CredState::Verified => {
                assert_eq!(creds[1].state, CredState::Aborted, "{state}");
                assert!(
                    !db.users().await.contains(&format!("{}@%", v2.username)),
                    "{state}: the new login is dropped"
                );
                assert_eq!(held.version, 1, "{state}");
            }
            _ => {
                assert_eq!(creds[1].state, CredState::Current, "{state}");
                assert_eq!(held.version, 2, "{state}");
            }
        }
        db.login(&held.username, held.password.expose())
            .await
            .unwrap_or_else(|e| panic!("{state}: {e}"));
        db.login(&v1.username, v1.password.expose())
            .await
            .unwrap_or_else(|e| panic!("{state}: v1: {e}"));
        let live: Vec<String> = ctx
            .ledger
            .live(&name)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.username)
            .collect();
        for login in ctx.engines["main"].managed_logins(&account).await.unwrap() {
            assert!(
                live.contains(&login),
                "{state}: unknown login {login} survived"
            );
        }
        assert!(live.len() <= 2, "{state}: {live:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiry_event_locks_a_login_at_its_expiry() {
    let db = MyDb::new().await;
    setup(&db).await;
    let name = db.name("exp");
    let ctx = db
        .context(&etl(&db, &name, "ephemeral", ""), system())
        .await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let p = db.published(&name);
    // As if credrotd had stopped: move the expiry 2 s ahead and wait.
    let until = chrono::Utc::now() + chrono::Duration::seconds(2);
    ctx.engines["main"]
        .extend_login(&p.username, until)
        .await
        .unwrap();
    db.login(&p.username, p.password.expose()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !locked(&db, &p.username).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the event did not lock the login"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(db.login(&p.username, p.password.expose()).await.is_err());
    let info = ctx.engines["main"]
        .login_info(&p.username)
        .await
        .unwrap()
        .unwrap();
    assert!(!info.can_login);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_reaches_the_general_log_the_binlog_the_ledger_or_an_error() {
    let db = MyDb::new().await;
    setup(&db).await;
    let mut secrets = Vec::new();
    for strategy in ["ephemeral", "alternating"] {
        let name = db.name(&strategy[..3]);
        let ctx = db.context(&etl(&db, &name, strategy, ""), system()).await;
        let account = ctx.account(&name).unwrap().clone();
        for _ in 0..3 {
            rotation::rotate(&ctx, &account).await.unwrap();
            let p = db.published(&name);
            secrets.push(p.password.expose().to_owned());
            // A failed verify must not echo the password either.
            let err = ctx.engines["main"]
                .verify(
                    &p.username,
                    &credrotd::secret::Secret::new("wrong-password-0123456789".into()),
                )
                .await
                .unwrap_err();
            assert_no_secret("a verify error", err.to_string().as_bytes(), &secrets);
        }
    }
    let user = db.name("sta_svc");
    db.exec(&format!(
        "CREATE USER '{user}'@'%' IDENTIFIED BY 'OriginalPassword-123456789'"
    ))
    .await;
    let name = db.name("sta");
    let ctx = db
        .context(
            &etl(
                &db,
                &name,
                "static",
                &format!("    role: {user}\n    overlap: 0s\n"),
            ),
            system(),
        )
        .await;
    let account = ctx.account(&name).unwrap().clone();
    for _ in 0..2 {
        rotation::rotate(&ctx, &account).await.unwrap();
        secrets.push(db.published(&name).password.expose().to_owned());
    }
    // Make sure the server wrote its logs out.
    db.exec("FLUSH LOGS").await;
    let logs = mysql_logs();
    let refs: Vec<&std::path::Path> = logs.iter().map(|p| p.as_path()).collect();
    let text = read_all(&refs);
    assert!(
        text.windows(20).any(|w| w == b"IDENTIFIED BY PASSWO"),
        "the general log records the account statements (hashes only)"
    );
    assert_no_secret("the MariaDB general and binary logs", &text, &secrets);
    let ledger = read_all(&[db.ledger_path().as_path()]);
    assert_no_secret("the ledger", &ledger, &secrets);
    let rows = db
        .query_strings(
            "SELECT CONCAT_WS(' ', name, kind, account, IFNULL(owner, '')) FROM credrotd.managed",
        )
        .await
        .join("\n");
    assert_no_secret("the marker table", rows.as_bytes(), &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_names_the_server_and_what_the_admin_lacks() {
    let db = MyDb::new().await;
    setup(&db).await;
    let name = db.name("plan");
    let ctx = db
        .context(&etl(&db, &name, "ephemeral", ""), system())
        .await;
    let account = ctx.account(&name).unwrap().clone();
    let engine = &ctx.engines["main"];
    let d = engine.describe().await.unwrap().unwrap();
    assert!(d.starts_with("MariaDB 10."), "{d}");
    assert!(d.contains("static accounts have no overlap"), "{d}");
    assert!(engine.check_admin(&[&account]).await.unwrap().is_empty());
    let mut dba = db.dba().await;
    sqlx::raw_sql(&format!(
        "REVOKE PROCESS, CONNECTION ADMIN ON *.* FROM '{}'@'%'",
        db.admin_user
    ))
    .execute(&mut dba)
    .await
    .unwrap();
    dba.close().await.unwrap();
    let gaps: Vec<String> = engine
        .check_admin(&[&account])
        .await
        .unwrap()
        .iter()
        .map(|g| g.to_string())
        .collect();
    assert_eq!(gaps.len(), 2, "{gaps:?}");
    assert!(
        gaps[0].contains("PROCESS") && gaps[1].contains("CONNECTION ADMIN"),
        "{gaps:?}"
    );
    let r = engine.reconcile(&account, false).await.unwrap();
    assert!(
        r.changes.iter().any(|c| c.0.starts_with("CREATE ROLE")),
        "{r:?}"
    );
}

/// The operator's commands through the real binary, unchanged for MariaDB:
/// `check`, `plan` (server line, admin check, would-do list), `rotate --all`,
/// `status --format json`, `revoke --previous-only`, with no password in
/// anything they print at `RUST_LOG=trace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_works_unchanged_on_mariadb() {
    let db = MyDb::new().await;
    setup(&db).await;
    let name = db.name("cli");
    let path = db.write_inventory_with("", &etl(&db, &name, "ephemeral", "    overlap: 1h\n"));
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_credrotd"))
            .env_remove("CREDROTD_CONFIG")
            .env("RUST_LOG", "trace")
            .arg("-c")
            .arg(&path)
            .args(args)
            .output()
            .expect("run credrotd");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let mut printed = String::new();

    let (ok, out) = run(&["check"]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["plan"]);
    assert!(ok, "{out}");
    assert!(out.contains("database main: MariaDB 10."), "{out}");
    assert!(out.contains("admin privileges on main: ok"), "{out}");
    assert!(out.contains("CREATE ROLE"), "{out}");
    printed.push_str(&out);

    for _ in 0..2 {
        let (ok, out) = run(&["rotate", "--all"]);
        assert!(ok, "{out}");
        printed.push_str(&out);
    }
    let (ok, out) = run(&["status", "--format", "json"]);
    assert!(ok, "{out}");
    let start = out.find('[').unwrap();
    // The JSON document first; trace logs (stderr) follow it.
    let rows: Vec<credrotd::api::AccountStatus> = serde_json::Deserializer::from_str(&out[start..])
        .into_iter()
        .next()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}: {out}"));
    let row = rows.iter().find(|r| r.account == name).unwrap();
    assert_eq!(row.current.as_ref().unwrap().version, 2);
    let previous = row.previous.as_ref().unwrap().username.clone();
    let current = db.published(&name);
    assert!(db.users().await.contains(&format!("{previous}@%")));

    let (ok, out) = run(&["revoke", &name, "--previous-only"]);
    assert!(ok, "{out}");
    printed.push_str(&out);
    assert!(!db.users().await.contains(&format!("{previous}@%")));
    db.login(&current.username, current.password.expose())
        .await
        .expect("the current login survives --previous-only");
    let (ok, out) = run(&["plan"]);
    assert!(ok, "{out}");
    assert!(!out.contains("CREATE ROLE"), "reconciled: {out}");
    printed.push_str(&out);
    assert_no_secret(
        "the CLI's output",
        printed.as_bytes(),
        &[current.password.expose().to_owned()],
    );
}

/// Eight accounts rotated at once through a pool of one admin connection: no
/// step may wait for a second connection while it holds the only one (the
/// server detection once did, and every account timed out).
#[tokio::test(flavor = "multi_thread")]
async fn rotate_all_with_one_admin_connection() {
    let db = MyDb::new().await;
    setup(&db).await;
    let names: Vec<String> = (0..8).map(|i| db.name(&format!("pool{i}"))).collect();
    let accounts: String = names.iter().map(|n| etl(&db, n, "ephemeral", "")).collect();
    let path = db.write_inventory_with("    max_connections: 1\n", &accounts);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_credrotd"))
        .env_remove("CREDROTD_CONFIG")
        .arg("-c")
        .arg(&path)
        .args(["rotate", "--all"])
        .output()
        .expect("run credrotd");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for n in &names {
        let p = db.published(n);
        db.login(&p.username, p.password.expose())
            .await
            .unwrap_or_else(|e| panic!("{n}'s published login fails: {e}"));
    }
}

/// `credrotd audit` and `who-can` through the binary on MariaDB: a database
/// credrotd just rotated has no finding about its accounts; each planted
/// fault (an orphan login, drift on the scoped role, a column grant, FILE,
/// SUPER from any host, an anonymous user, two identical roles, an expired
/// user) is found with the right kind and role; `who-can` follows a role
/// granted to a user; no issued password is printed.
///
/// The MariaDB server is shared by the tests of this file, which run in
/// parallel, each with its own tag, database and admin: every other test's
/// admin (CREATE USER and PROCESS from '%'), its managed roles and logins (to
/// this inventory, accounts it no longer lists) and the harness's DBA are
/// findings here too. So the audit's exit code says nothing, and only the
/// findings about this test's own roles (whose role or detail names its tag)
/// are looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_and_who_can_on_mariadb() {
    let db = MyDb::new().await;
    setup(&db).await;
    let t = db.tag.clone();
    let schema = db.dbname.clone();
    let (eph, alt) = (db.name("eph"), db.name("alt"));
    let accounts = format!(
        "{}{}",
        etl(&db, &eph, "ephemeral", ""),
        etl(&db, &alt, "alternating", "")
    );
    let path = db.write_inventory_with("", &accounts);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_credrotd"))
            .env_remove("CREDROTD_CONFIG")
            .arg("-c")
            .arg(&path)
            .args(args)
            .output()
            .expect("run credrotd");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out, text)
    };
    let audit = || {
        let (out, text) = run(&["audit", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("audit prints JSON ({e}): {text}"));
        assert_ne!(out.status.code(), Some(2), "{text}");
        (v, text)
    };
    let ours = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| {
                f["role"].as_str().unwrap_or("").contains(t.as_str())
                    || f["detail"].as_str().unwrap_or("").contains(t.as_str())
            })
            .cloned()
            .collect()
    };

    let mut secrets = Vec::new();
    for _ in 0..2 {
        let (out, text) = run(&["rotate", "--all"]);
        assert!(out.status.success(), "{text}");
        for a in [&eph, &alt] {
            secrets.push(db.published(a).password.expose().to_owned());
        }
    }

    // Clean: two rotations in, a retiring ephemeral login, both twins.
    let (v, text) = audit();
    assert_eq!(ours(&v), Vec::<serde_json::Value>::new(), "{text}");
    let notes = v["notes"].as_array().unwrap();
    let admin = format!("{}@%", db.admin_user);
    assert!(
        notes.iter().any(|n| n["role"] == admin.as_str()
            && n["detail"]
                .as_str()
                .unwrap()
                .contains("credrotd connects as this role (MariaDB 10.")),
        "the admin is a note: {text}"
    );
    assert!(
        notes.iter().any(|n| n["role"] == "root@localhost"
            && n["detail"]
                .as_str()
                .unwrap()
                .contains("the server's own administrator")),
        "root is a note: {text}"
    );
    for system in ["root@localhost", "mariadb.sys@localhost"] {
        assert!(
            !v["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["role"] == system),
            "{system}: {text}"
        );
    }
    let mut printed = text;

    // Plant one of each, as the DBA.
    let pw = format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    let gone = format!("{t}_gone_20260101000000");
    db.exec(&format!(
        "CREATE USER '{gone}'@'%' IDENTIFIED BY '{pw}';
         INSERT INTO credrotd.managed (name, kind, account, valid_until)
           VALUES ('{gone}', 'login', '{t}_gone', NULL);
         GRANT DELETE ON `{schema}`.`orders` TO '{eph}';
         GRANT SELECT (salary) ON `{schema}`.`payroll` TO '{eph}';
         CREATE USER '{t}_filer'@'localhost' IDENTIFIED BY '{pw}';
         GRANT FILE ON *.* TO '{t}_filer'@'localhost';
         CREATE USER '{t}_wild'@'%' IDENTIFIED BY '{pw}';
         GRANT SUPER ON *.* TO '{t}_wild'@'%';
         CREATE USER ''@'{t}.invalid';
         CREATE ROLE '{t}_ro1';
         CREATE ROLE '{t}_ro2';
         GRANT SELECT ON `{schema}`.`customers` TO '{t}_ro1';
         GRANT SELECT ON `{schema}`.`customers` TO '{t}_ro2';
         CREATE USER '{t}_old'@'%' IDENTIFIED BY '{pw}' PASSWORD EXPIRE;
         CREATE ROLE '{t}_grp';
         GRANT SELECT ON `{schema}`.`payroll` TO '{t}_grp';
         CREATE USER '{t}_bob'@'%' IDENTIFIED BY '{pw}';
         GRANT '{t}_grp' TO '{t}_bob'@'%'"
    ))
    .await;
    let (v, text) = audit();
    let findings = ours(&v);
    let expect: Vec<(&str, &str, String, String)> = vec![
        (
            "orphan",
            "error",
            format!("{gone}@%"),
            "which the inventory no longer lists; it can log in".into(),
        ),
        (
            "drift",
            "warning",
            eph.clone(),
            format!("REVOKE DELETE ON `{schema}`.`orders` FROM '{eph}'"),
        ),
        (
            "drift",
            "warning",
            eph.clone(),
            "column privilege the inventory does not declare: SELECT".into(),
        ),
        (
            "dangerous",
            "warning",
            format!("{t}_filer@localhost"),
            "login role holds FILE".into(),
        ),
        (
            "dangerous",
            "error",
            format!("{t}_wild@%"),
            "login role holds SUPER".into(),
        ),
        (
            "dangerous",
            "warning",
            format!("{t}_wild@%"),
            "from any host".into(),
        ),
        (
            "dangerous",
            "warning",
            format!("@{t}.invalid"),
            "anonymous".into(),
        ),
        (
            "bloat",
            "info",
            format!("{t}_ro1"),
            format!("roles {t}_ro1, {t}_ro2 hold the same 1 privileges"),
        ),
        (
            "expired",
            "warning",
            format!("{t}_old@%"),
            "but still exists and has LOGIN".into(),
        ),
    ];
    for (kind, severity, role, detail) in &expect {
        assert!(
            findings.iter().any(|f| f["kind"] == *kind
                && f["severity"] == *severity
                && f["role"] == role.as_str()
                && f["detail"].as_str().unwrap_or("").contains(detail.as_str())),
            "missing {severity} {kind} {role} {detail:?}: {text}"
        );
    }
    let fix_of = |role: &str, detail: &str| -> String {
        findings
            .iter()
            .find(|f| f["role"] == role && f["detail"].as_str().unwrap_or("").contains(detail))
            .and_then(|f| f["fix"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        fix_of(&format!("{gone}@%"), "no longer lists"),
        format!("DROP USER '{gone}'@'%'")
    );
    assert_eq!(
        fix_of(&format!("{t}_filer@localhost"), "FILE"),
        format!("REVOKE FILE ON *.* FROM '{t}_filer'@'localhost'")
    );
    assert_eq!(
        fix_of(&eph, "column privilege"),
        format!("REVOKE SELECT (`salary`) ON `{schema}`.`payroll` FROM '{eph}'")
    );
    assert_eq!(
        fix_of(&format!("@{t}.invalid"), "anonymous"),
        format!("DROP USER ''@'{t}.invalid'")
    );
    // Nothing about the admin, the live logins, the role users only inherit
    // through, or the user that holds nothing.
    for quiet in [admin.clone(), format!("{t}_bob@%"), format!("{t}_grp")] {
        assert!(
            !findings.iter().any(|f| f["role"] == quiet.as_str()),
            "{quiet}: {text}"
        );
    }
    assert!(
        !findings
            .iter()
            .any(|f| f["kind"] == "orphan" && f["role"] != format!("{gone}@%").as_str()),
        "only the planted login is an orphan: {text}"
    );
    for f in &findings {
        assert!(f["fix"].is_string() || f["kind"] == "bloat", "{f}");
    }
    printed.push_str(&text);

    // who-can: through the role granted to a user.
    let (out, text) = run(&[
        "who-can",
        "select",
        &format!("{schema}.payroll"),
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{text}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let holders = v[0]["holders"].as_array().unwrap();
    let bob = holders
        .iter()
        .find(|h| h["role"] == format!("{t}_bob@%").as_str())
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        bob["chain"],
        serde_json::json!([format!("{t}_bob@%"), format!("{t}_grp")])
    );
    assert_eq!(bob["can_login"], true);
    assert_eq!(
        bob["via"],
        format!("SELECT on table {schema}.payroll").as_str()
    );
    let roles: Vec<&str> = holders.iter().filter_map(|h| h["role"].as_str()).collect();
    assert!(roles.contains(&"root@localhost"), "{roles:?}");
    // The accounts' logins read only a column of it: not the table.
    let current = db.published(&eph).username;
    assert!(
        !roles.contains(&eph.as_str()) && !roles.contains(&format!("{current}@%").as_str()),
        "{roles:?}"
    );
    printed.push_str(&text);
    let (out, text) = run(&["who-can", "SELECT", &format!("{schema}.payroll")]);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "{t}_bob@% (login): {t}_bob@% -> {t}_grp via SELECT on table {schema}.payroll"
        )),
        "{text}"
    );
    printed.push_str(&text);
    assert_no_secret("audit and who-can output", printed.as_bytes(), &secrets);
}

/// The daemon's session sample (stale-login detection) sees a consumer that is
/// connected now, by user name, and not once it has gone.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_lists_the_users_connected_now() {
    let db = MyDb::new().await;
    setup(&db).await;
    let name = db.name("seen");
    let ctx = db
        .context(&etl(&db, &name, "ephemeral", ""), system())
        .await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let p = db.published(&name);
    let engine = ctx.engines["main"].clone();
    let session = db.login(&p.username, p.password.expose()).await.unwrap();
    let seen = engine.sessions().await.unwrap();
    assert!(seen.contains(&p.username), "{seen:?}");
    session.close().await.unwrap();
    let mut gone = false;
    for _ in 0..50 {
        if !engine.sessions().await.unwrap().contains(&p.username) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the closed session is still listed");
}
