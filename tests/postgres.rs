//! The saga against a real PostgreSQL that checks passwords: every strategy, grants,
//! overlap, expiry, revocation, drift, crash recovery and secret hygiene.
//! Run through `./scripts/test`, which starts the cluster.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::{assert_no_secret, TestDb};
use credrotd::clock::{Clock, ManualClock, SharedClock, SystemClock};
use credrotd::engine::{Change, Owner, Reconciled};
use credrotd::ledger::CredState;
use credrotd::rotation::{self, RotationError};
use sqlx::{Connection, Executor};

fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// The tables the tests grant on. `analytics` belongs to the test's owner role
/// (`<tag>_owner`, which credrotd's admin is a member of, as it would be of an
/// application's owner role), so that credrotd may set default privileges for
/// tables its owner creates later; `public` and `ops` belong to the superuser,
/// and the non-superuser admin can only pass on what it holds WITH GRANT OPTION.
fn fixtures(db: &TestDb) -> String {
    let owner = &db.owner;
    format!(
        "
CREATE SCHEMA analytics AUTHORIZATION {owner};
SET ROLE {owner};
CREATE TABLE analytics.events (id bigserial PRIMARY KEY, kind text NOT NULL);
RESET ROLE;
CREATE TABLE public.orders (id bigserial PRIMARY KEY, total numeric NOT NULL);
CREATE TABLE public.customers (id bigserial PRIMARY KEY, name text NOT NULL);
CREATE TABLE public.payroll (id bigserial PRIMARY KEY, salary numeric NOT NULL);
INSERT INTO public.orders (total) VALUES (1), (2);
INSERT INTO public.customers (name) VALUES ('a');
CREATE SCHEMA ops;
CREATE FUNCTION ops.refresh_stats(n int) RETURNS int LANGUAGE sql AS 'SELECT n + 1';
CREATE FUNCTION ops.purge_everything() RETURNS int LANGUAGE sql AS 'SELECT 0';
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ops FROM PUBLIC;
CREATE SEQUENCE ops.ticket_seq;
"
    )
}

/// A fresh test database with [`fixtures`].
async fn setup(db: &TestDb) {
    db.exec(&fixtures(db)).await;
}

fn etl(name: &str, strategy: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    database: main\n    strategy: {strategy}\n{extra}    grants:\n\
         \x20     - {{ schema: analytics, privileges: [USAGE] }}\n\
         \x20     - {{ schema: analytics, tables: \"*\", privileges: [SELECT, INSERT] }}\n\
         \x20     - {{ schema: analytics, sequences: \"*\", privileges: [USAGE] }}\n\
         \x20     - {{ schema: public, privileges: [USAGE] }}\n\
         \x20     - {{ schema: public, tables: [orders], privileges: [SELECT] }}\n"
    )
}

/// Checks that `conn` can do exactly what `etl()` grants.
async fn assert_exact_privileges(db: &TestDb, user: &str, password: &str) {
    let mut c = db
        .login(user, password)
        .await
        .expect("the issued credential logs in");
    let ok = |sql: &'static str| sql;
    for sql in [
        ok("SELECT count(*) FROM analytics.events"),
        ok("INSERT INTO analytics.events (kind) VALUES ('x')"),
        ok("SELECT count(*) FROM public.orders"),
    ] {
        c.execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{user} should be allowed: {sql}: {e}"));
    }
    for sql in [
        "UPDATE analytics.events SET kind = 'y'",
        "DELETE FROM analytics.events",
        "SELECT count(*) FROM public.customers",
        "SELECT count(*) FROM public.payroll",
        "INSERT INTO public.orders (total) VALUES (3)",
        "CREATE TABLE public.sneaky (id int)",
        "CREATE TABLE analytics.sneaky (id int)",
        "SET ROLE credrotd_admin",
    ] {
        let err = c.execute(sql).await.expect_err(sql);
        let msg = err.to_string();
        assert!(
            msg.contains("permission denied"),
            "{user}: {sql}: expected permission denied, got {msg}"
        );
    }
    // A table created later in a "*" schema is covered by default privileges.
    db.exec(&format!(
        "SET ROLE {}; CREATE TABLE analytics.later (id int)",
        db.owner
    ))
    .await;
    c.execute("SELECT count(*) FROM analytics.later")
        .await
        .expect("future tables are covered");
    db.exec("DROP TABLE analytics.later").await;
    c.close().await.unwrap();
}

async fn valid_until(db: &TestDb, user: &str) -> Option<chrono::DateTime<Utc>> {
    let mut c = db.admin().await;
    let v: Option<chrono::DateTime<Utc>> =
        sqlx::query_scalar("SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1")
            .bind(user)
            .fetch_one(&mut c)
            .await
            .unwrap();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_credential_logs_in_with_exactly_the_declared_privileges() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("etl");
    let ctx = db.context(&etl(&name, "ephemeral", ""), system()).await;
    let account = ctx.account(&name).unwrap().clone();
    let r = rotation::rotate(&ctx, &account).await.unwrap();
    assert!(
        r.username.starts_with(&format!("{name}_")) && r.username.len() == name.len() + 15,
        "{}",
        r.username
    );

    let p = db.published(&name);
    assert_eq!(p.username, r.username);
    assert_eq!(p.version, 1);
    assert_exact_privileges(&db, &p.username, p.password.expose()).await;

    // VALID UNTIL is the ledger's expiry, enforced by the server.
    let vu = valid_until(&db, &p.username)
        .await
        .expect("VALID UNTIL is set");
    assert_eq!(vu.timestamp(), r.expires_at.timestamp());
    // Scoped role: NOLOGIN, no dangerous attribute, marked as managed; the login
    // role holds no grant of its own.
    assert!(db.query_bool(&format!(
        "SELECT NOT rolcanlogin AND NOT rolsuper AND NOT rolcreatedb AND NOT rolcreaterole AND NOT rolbypassrls \
         AND shobj_description(oid, 'pg_authid') LIKE 'credrotd:scoped%' FROM pg_roles WHERE rolname = '{name}'"
    )).await);
    assert!(db.query_bool(&format!(
        "SELECT NOT EXISTS (SELECT 1 FROM pg_class c, aclexplode(c.relacl) a WHERE a.grantee = '{}'::regrole)",
        p.username
    )).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_uses_two_fixed_roles_in_turn_with_an_overlap() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("rep");
    let ctx = db
        .context(&etl(&name, "alternating", "    overlap: 30m\n"), system())
        .await;
    let account = ctx.account(&name).unwrap().clone();

    rotation::rotate(&ctx, &account).await.unwrap();
    let first = db.published(&name);
    assert_eq!(first.username, format!("{name}_a"));
    assert_exact_privileges(&db, &first.username, first.password.expose()).await;

    let r2 = rotation::rotate(&ctx, &account).await.unwrap();
    let second = db.published(&name);
    assert_eq!(second.username, format!("{name}_b"));
    assert_eq!(
        r2.previous.as_ref().map(|p| p.0.as_str()),
        Some(first.username.as_str())
    );
    // During the overlap both log in.
    db.login(&first.username, first.password.expose())
        .await
        .expect("previous works during the overlap");
    db.login(&second.username, second.password.expose())
        .await
        .expect("current works");

    // The overlap ends: the previous is refused; the current still works.
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
    let err = db
        .login(&first.username, first.password.expose())
        .await
        .unwrap_err();
    // Revoked: NOLOGIN and expired, so the server refuses the password before
    // it would say the role may not log in.
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
    db.login(&second.username, second.password.expose())
        .await
        .expect("current still works");

    // The third rotation reuses `_a` with a fresh password.
    rotation::rotate(&ctx, &account).await.unwrap();
    let third = db.published(&name);
    assert_eq!(third.username, first.username);
    assert_ne!(third.password.expose(), first.password.expose());
    assert!(
        db.login(&first.username, first.password.expose())
            .await
            .is_err(),
        "the old _a password is dead"
    );
    assert_exact_privileges(&db, &third.username, third.password.expose()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_role_gets_a_new_password_in_place_and_adopt_leaves_it_alone() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("legacy");
    let role = db.name("legacy_svc");
    db.exec(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'OriginalPassword-123456789'"
    ))
    .await;
    let extra = format!("    role: {role}\n    adopt: true\n    overlap: 0\n");
    let ctx = db.context(&etl(&name, "static", &extra), system()).await;
    let account = ctx.account(&name).unwrap().clone();

    // Adopting records the role without touching it.
    ctx.with_lease(&name, Duration::from_secs(5), |lease| {
        let (ctx, account) = (&ctx, &account);
        async move { rotation::adopt(ctx, &lease, account).await }
    })
    .await
    .unwrap();
    db.login(&role, "OriginalPassword-123456789")
        .await
        .expect("adopted role keeps its password");
    let live = ctx.ledger.live(&name).await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(
        (live[0].state, live[0].strategy.as_str()),
        (CredState::Current, "adopted")
    );

    // The first rotation replaces the password; the role gets the scoped grants.
    rotation::rotate(&ctx, &account).await.unwrap();
    let p = db.published(&name);
    assert_eq!(p.username, role);
    assert!(db.login(&role, "OriginalPassword-123456789").await.is_err());
    assert_exact_privileges(&db, &role, p.password.expose()).await;
    assert!(valid_until(&db, &role).await.is_some());
    // No overlap on PostgreSQL: the previous version is revoked at once.
    let states: Vec<CredState> = ctx
        .ledger
        .credentials(&name)
        .await
        .unwrap()
        .iter()
        .map(|c| c.state)
        .collect();
    assert_eq!(states, vec![CredState::Revoked, CredState::Current]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_revokes_the_previous_credential_when_the_overlap_ends() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("sched");
    let clock = ManualClock::new(Utc::now());
    let ctx = Arc::new(
        db.context(
            &etl(
                &name,
                "ephemeral",
                "    schedule: \"0 0 * * * *\"\n    overlap: 10m\n",
            ),
            Arc::new(clock.clone()),
        )
        .await,
    );
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(credrotd::scheduler::run(ctx.clone(), rx, async {
        let _ = stop_rx.await;
    }));

    let wait_for = |want: usize| {
        let ctx = ctx.clone();
        let name = name.clone();
        async move {
            for _ in 0..500 {
                let creds = ctx.ledger.credentials(&name).await.unwrap();
                if creds.len() >= want && creds.iter().all(|c| !c.state.is_middle()) {
                    return creds;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("timed out waiting for {want} credentials");
        }
    };
    wait_for(1).await;
    let v1 = db.published(&name);

    // The next hourly fire rotates.
    let next = ctx
        .account(&name)
        .unwrap()
        .schedule
        .next_after(clock.now())
        .unwrap();
    clock.set(next + chrono::Duration::seconds(1));
    let creds = wait_for(2).await;
    assert_eq!(creds[0].state, CredState::Retiring);
    let v2 = db.published(&name);
    assert_eq!(v2.version, 2);
    db.login(&v1.username, v1.password.expose())
        .await
        .expect("v1 works during the overlap");

    // Nine minutes in: still valid. Past ten: revoked and dropped.
    clock.advance(chrono::Duration::minutes(9));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        ctx.ledger.credentials(&name).await.unwrap()[0].state,
        CredState::Retiring
    );
    db.login(&v1.username, v1.password.expose())
        .await
        .expect("v1 still works before the overlap ends");
    clock.advance(chrono::Duration::minutes(2));
    for _ in 0..500 {
        if ctx.ledger.credentials(&name).await.unwrap()[0].state == CredState::Revoked {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        ctx.ledger.credentials(&name).await.unwrap()[0].state,
        CredState::Revoked
    );
    assert!(
        db.login(&v1.username, v1.password.expose()).await.is_err(),
        "v1 refused after the overlap"
    );
    assert!(
        !db.roles().await.contains(&v1.username),
        "the ephemeral login role is dropped"
    );
    db.login(&v2.username, v2.password.expose())
        .await
        .expect("v2 still works");

    stop_tx.send(()).unwrap();
    daemon.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_past_its_valid_until_cannot_log_in() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("old");
    // A clock ten days behind issues a credential whose VALID UNTIL has passed:
    // the server refuses it, so verification fails and the saga rolls back.
    let clock = ManualClock::new(Utc::now() - chrono::Duration::days(10));
    let ctx = db
        .context(
            &etl(
                &name,
                "ephemeral",
                "    schedule: \"0 0 * * * *\"\n    overlap: 5m\n",
            ),
            Arc::new(clock),
        )
        .await;
    let account = ctx.account(&name).unwrap().clone();
    let err = rotation::rotate(&ctx, &account).await.unwrap_err();
    assert!(
        matches!(
            err,
            RotationError::Engine(credrotd::engine::EngineError::Verify { .. })
        ),
        "{err}"
    );
    let creds = ctx.ledger.credentials(&name).await.unwrap();
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].state, CredState::Aborted);
    assert!(
        !db.roles().await.contains(&creds[0].username),
        "the rolled-back login is dropped"
    );
    assert!(
        !db.secrets_dir().join(format!("{name}.json")).exists(),
        "nothing was published"
    );

    // And a working credential stops working when its expiry passes.
    let ctx = db.context(&etl(&name, "ephemeral", ""), system()).await;
    rotation::rotate(&ctx, &account).await.unwrap();
    let p = db.published(&name);
    db.login(&p.username, p.password.expose()).await.unwrap();
    db.exec(&format!(
        "ALTER ROLE \"{}\" VALID UNTIL '2000-01-01'",
        p.username
    ))
    .await;
    let err = db
        .login(&p.username, p.password.expose())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ends_live_sessions_and_keeps_owned_objects() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("ddl");
    let extra = "    allow_ddl: true\n    overlap: 30m\n";
    let mut accounts = etl(&name, "ephemeral", extra);
    accounts.push_str("      - { schema: analytics, privileges: [CREATE] }\n");
    let ctx = db.context(&accounts, system()).await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let v1 = db.published(&name);

    // A live session that owns an object of its own (after SET ROLE NONE the
    // login role itself is the owner; RESET ROLE would go back to the scoped
    // role, the login's default).
    let mut session = db.login(&v1.username, v1.password.expose()).await.unwrap();
    session.execute("SET ROLE NONE").await.unwrap();
    session
        .execute("CREATE TABLE analytics.made_by_login (id int)")
        .await
        .unwrap();
    session.execute("SET ROLE NONE").await.unwrap();
    session
        .execute(format!("SET ROLE \"{name}\"").as_str())
        .await
        .unwrap();
    session
        .execute("CREATE TABLE analytics.made_by_scoped (id int)")
        .await
        .unwrap();

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

    let err = session
        .execute("SELECT 1")
        .await
        .expect_err("the live session is terminated");
    drop(err);
    assert!(
        !db.roles().await.contains(&v1.username),
        "the login role is gone"
    );
    let owners = db
        .query_strings(
            "SELECT tableowner::text FROM pg_tables WHERE schemaname = 'analytics' AND tablename LIKE 'made_by_%' ORDER BY tablename",
        )
        .await;
    assert_eq!(
        owners,
        vec![name.clone(), name.clone()],
        "objects are handed to the scoped role, not dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_undoes_changes_made_behind_its_back() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("drift");
    let group = db.name("tenant_reader");
    db.exec(&format!("CREATE ROLE {group} NOLOGIN")).await;
    db.grant_parameter("app.tenant_id").await;
    let extra = format!("    member_of: [{group}]\n    settings: {{ app.tenant_id: \"42\" }}\n    connection_limit: 3\n");
    let ctx = db.context(&etl(&name, "ephemeral", &extra), system()).await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let engine = ctx.engines["main"].clone();
    assert_eq!(
        engine.reconcile(&account, false).await.unwrap(),
        Reconciled::default(),
        "no drift right after a rotation"
    );
    let p = db.published(&name);
    let mut c = db.login(&p.username, p.password.expose()).await.unwrap();
    let tenant: String = sqlx::query_scalar("SELECT current_setting('app.tenant_id')")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(tenant, "42", "settings reach the login's session");
    let who: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(who, name, "sessions run as the scoped role");
    c.close().await.unwrap();

    // Someone edits the scoped role and its privilege role by hand, with the
    // admin's rights (a grant the admin made can only be revoked by the admin,
    // a grant option holder). The scoped role holds no privilege of its own.
    let held = db.privilege_role(&name).await;
    db.exec_as_daemon_admin(&format!(
        "GRANT DELETE ON public.orders TO {name}; GRANT SELECT ON public.payroll TO {held};
         REVOKE SELECT ON public.orders FROM {held}; REVOKE {group} FROM {name};
         ALTER ROLE {name} SET app.tenant_id = '7'; ALTER ROLE {name} SET search_path = 'x'"
    ))
    .await;
    let plan: Vec<String> = engine
        .reconcile(&account, false)
        .await
        .unwrap()
        .changes
        .into_iter()
        .map(|c| c.0)
        .collect();
    for needle in [
        &format!("GRANT SELECT ON TABLE \"public\".\"orders\" TO \"{held}\""),
        &format!("REVOKE DELETE ON TABLE \"public\".\"orders\" FROM \"{name}\""),
        &format!("REVOKE SELECT ON TABLE \"public\".\"payroll\" FROM \"{held}\""),
        "GRANT \"",
        "app\".\"tenant_id\" = '42'",
        "RESET \"search_path\"",
    ] {
        assert!(
            plan.iter().any(|s| s.contains(needle)),
            "plan lacks {needle}: {plan:#?}"
        );
    }
    // Plan changed nothing.
    assert_eq!(
        engine
            .reconcile(&account, false)
            .await
            .unwrap()
            .changes
            .len(),
        plan.len()
    );
    let applied = engine.reconcile(&account, true).await.unwrap();
    assert_eq!(applied.changes.len(), plan.len(), "{applied:#?}");
    assert!(applied.stuck.is_empty(), "{applied:#?}");
    assert_eq!(
        engine.reconcile(&account, false).await.unwrap(),
        Reconciled::default(),
        "drift is gone"
    );
    assert_exact_privileges(&db, &p.username, p.password.expose()).await;

    // The table's owner (the superuser) grants something too: the admin cannot
    // revoke a grant it did not make. That is reported as stuck, not an error,
    // and the rest of reconciliation still applies.
    db.exec(&format!("GRANT UPDATE ON public.customers TO {name}"))
        .await;
    db.exec_as_daemon_admin(&format!("REVOKE SELECT ON public.orders FROM {held}"))
        .await;
    let r = engine.reconcile(&account, true).await.unwrap();
    assert_eq!(
        r.changes,
        vec![Change(format!(
            "GRANT SELECT ON TABLE \"public\".\"orders\" TO \"{held}\""
        ))],
        "{r:#?}"
    );
    assert_eq!(r.stuck.len(), 1, "{r:#?}");
    assert_eq!(
        r.stuck[0].what,
        format!("REVOKE UPDATE ON TABLE \"public\".\"customers\" FROM \"{name}\"")
    );
    assert!(
        r.stuck[0].error.starts_with("had no effect")
            && r.stuck[0].error.contains("granted by credrotd_admin"),
        "{r:#?}"
    );
    assert!(
        db.query_bool(&format!(
            "SELECT has_table_privilege('{name}', 'public.orders', 'SELECT')"
        ))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_credrotd_does_not_manage_is_never_taken_over() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("taken");
    db.exec(&format!("CREATE ROLE {name} LOGIN SUPERUSER"))
        .await;
    let ctx = db.context(&etl(&name, "ephemeral", ""), system()).await;
    let account = ctx.account(&name).unwrap().clone();
    let err = rotation::rotate(&ctx, &account).await.unwrap_err();
    assert!(err.to_string().contains("not managed by credrotd"), "{err}");
    assert!(
        db.query_bool(&format!(
            "SELECT rolsuper FROM pg_roles WHERE rolname = '{name}'"
        ))
        .await,
        "untouched"
    );
    assert!(ctx.ledger.credentials(&name).await.unwrap().is_empty());
}

/// For each middle state: crash right after the ledger records it, then recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_any_middle_state_is_finished_or_rolled_back() {
    let db = TestDb::new().await;
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
        let name = db.name(&format!("crash{i}"));
        let accounts = etl(&name, "ephemeral", "");
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
        assert_eq!(v2.state, state);

        // Restart: a fresh context (new process, same ledger) recovers.
        let ctx = db.context(&accounts, system()).await;
        let report = rotation::recover_account(&ctx, &account).await.unwrap();
        let creds = ctx.ledger.credentials(&name).await.unwrap();
        assert!(
            creds.iter().all(|c| !c.state.is_middle()),
            "{state}: a middle state is left: {creds:?}"
        );
        let held = db.published(&name);
        match state {
            CredState::Planned | CredState::Created | CredState::Verified => {
                assert_eq!(creds[1].state, CredState::Aborted, "{state}");
                assert_eq!(creds[0].state, CredState::Current, "{state}");
                assert_eq!(report.rolled_back, vec![v2.username.clone()]);
                assert!(
                    !db.roles().await.contains(&v2.username),
                    "{state}: the new login is dropped"
                );
                assert_eq!(held.version, 1, "{state}: the store still holds v1");
            }
            CredState::Published | CredState::Current => {
                assert_eq!(creds[1].state, CredState::Current, "{state}");
                assert_eq!(creds[0].state, CredState::Retiring, "{state}");
                assert_eq!(held.version, 2, "{state}");
            }
            _ => unreachable!(),
        }
        // Invariant 1: what the store marks current logs in; v1 too (overlap).
        db.login(&held.username, held.password.expose())
            .await
            .unwrap_or_else(|e| panic!("{state}: {e}"));
        db.login(&v1.username, v1.password.expose())
            .await
            .unwrap_or_else(|e| panic!("{state}: v1: {e}"));
        // Invariant 3: no login role the ledger does not know as live.
        let live: Vec<String> = ctx
            .ledger
            .live(&name)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.username)
            .collect();
        for role in ctx.engines["main"].managed_logins(&account).await.unwrap() {
            assert!(
                live.contains(&role),
                "{state}: unknown login {role} survived recovery"
            );
        }
        // Invariant 4: at most two valid.
        assert!(live.len() <= 2, "{state}: {live:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_drops_login_roles_the_ledger_does_not_know() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("orph");
    let ctx = db.context(&etl(&name, "ephemeral", ""), system()).await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let orphan = format!("{name}_20000101000000");
    db.exec(&format!(
        "CREATE ROLE {orphan} LOGIN PASSWORD 'x-orphan-password-123' IN ROLE {name};
         COMMENT ON ROLE {orphan} IS 'credrotd:login account={name}'"
    ))
    .await;
    // A login the ledger does not know and no store serves (a lost ledger's
    // old predecessor) is refused and dropped at once; the one the stores
    // serve is untouched.
    let report = rotation::recover_account(&ctx, &account).await.unwrap();
    assert_eq!(report.orphans_dropped, vec![orphan.clone()]);
    assert!(!db.roles().await.contains(&orphan));
    // A login of the account that cannot log in is dropped too.
    let dead = format!("{name}_20000101000001");
    db.exec(&format!(
        "CREATE ROLE {dead} NOLOGIN IN ROLE {name};
         COMMENT ON ROLE {dead} IS 'credrotd:login account={name}'"
    ))
    .await;
    let report = rotation::recover_account(&ctx, &account).await.unwrap();
    assert_eq!(report.orphans_dropped, vec![dead.clone()]);
    assert!(!db.roles().await.contains(&dead));
    let p = db.published(&name);
    db.login(&p.username, p.password.expose())
        .await
        .expect("the current credential is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_reaches_the_server_log_the_ledger_or_an_error() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("leak");
    let ctx = db
        .context(&etl(&name, "ephemeral", "    overlap: 0\n"), system())
        .await;
    let account = ctx.account(&name).unwrap().clone();
    let mut passwords = Vec::new();
    for _ in 0..3 {
        rotation::rotate(&ctx, &account).await.unwrap();
        passwords.push(db.published(&name).password.expose().to_owned());
    }
    // A failing verification produces an error that must not carry the password.
    let alt = db.name("leak_alt");
    let actx = db
        .context(
            &format!(
                "{}{}",
                etl(&name, "ephemeral", "    overlap: 0\n"),
                etl(&alt, "alternating", "")
            ),
            system(),
        )
        .await;
    let aacc = actx.account(&alt).unwrap().clone();
    rotation::rotate(&actx, &aacc).await.unwrap();
    passwords.push(db.published(&alt).password.expose().to_owned());
    // A failed login (wrong password, and an unknown user) gives errors that name
    // the user but never carry the password that was tried.
    let engine = ctx.engines["main"].clone();
    let wrong = credrotd::secret::Secret::new("WrongPassword-0123456789abcdef".to_owned());
    let mut errors = Vec::new();
    for user in [db.published(&name).username, db.name("nobody")] {
        let err = engine
            .verify(&user, &wrong)
            .await
            .expect_err("a wrong password is refused");
        errors.push(format!("{err} {err:?}"));
    }
    passwords.push(wrong.expose().to_owned());
    ctx.ledger.close().await;
    actx.ledger.close().await;

    let log = common::read_all(&[&common::pg_log()]);
    assert!(
        !log.is_empty(),
        "the server log is empty: statement logging is off?"
    );
    assert!(
        log.windows(11).any(|w| w == b"CREATE ROLE"),
        "the server log does not show CREATE ROLE: log_statement=all is not in effect"
    );
    assert_no_secret("the server's statement log", &log, &passwords);
    let wal = db.ledger_path().with_extension("db-wal");
    let ledger = common::read_all(&[&db.ledger_path(), &wal]);
    assert!(!ledger.is_empty());
    assert_no_secret("the ledger", &ledger, &passwords);
    assert_no_secret("errors", errors.join("\n").as_bytes(), &passwords);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_disables_an_alternating_login_the_ledger_does_not_know() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("alt");
    let ctx = db.context(&etl(&name, "alternating", ""), system()).await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    // `_b` gets login rights and a password behind credrotd's back (or from a lost
    // ledger).
    let b = format!("{name}_b");
    db.exec(&format!(
        "CREATE ROLE {b} LOGIN PASSWORD 'unknown-password-123456' IN ROLE {name};
         COMMENT ON ROLE {b} IS 'credrotd:alternating account={name}'"
    ))
    .await;
    db.login(&b, "unknown-password-123456")
        .await
        .expect("the stray login works before recovery");
    let report = rotation::recover_account(&ctx, &account).await.unwrap();
    assert_eq!(report.orphans_dropped, vec![b.clone()]);
    assert!(db.login(&b, "unknown-password-123456").await.is_err());
    assert!(
        db.roles().await.contains(&b),
        "a fixed role is kept, only refused"
    );
    let p = db.published(&name);
    db.login(&p.username, p.password.expose())
        .await
        .expect("the current `_a` is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_and_sequence_grants_are_exact() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("fn");
    let accounts = format!(
        "  {name}:\n    database: main\n    grants:\n\
         \x20     - {{ schema: ops, privileges: [USAGE] }}\n\
         \x20     - {{ schema: ops, functions: [refresh_stats], privileges: [EXECUTE] }}\n\
         \x20     - {{ schema: ops, sequences: [ticket_seq], privileges: [USAGE] }}\n"
    );
    let ctx = db.context(&accounts, system()).await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let p = db.published(&name);
    let mut c = db.login(&p.username, p.password.expose()).await.unwrap();
    let v: i32 = sqlx::query_scalar("SELECT ops.refresh_stats(41)")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(v, 42);
    let n: i64 = sqlx::query_scalar("SELECT nextval('ops.ticket_seq')")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 1);
    for sql in [
        "SELECT ops.purge_everything()",
        "SELECT setval('ops.ticket_seq', 100)",
    ] {
        let err = c.execute(sql).await.expect_err(sql);
        assert!(
            err.to_string().contains("permission denied"),
            "{sql}: {err}"
        );
    }
    c.close().await.unwrap();
    assert_eq!(
        ctx.engines["main"]
            .reconcile(&account, false)
            .await
            .unwrap(),
        Reconciled::default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sagas_for_one_account_in_one_process_exclude_each_other() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("twice");
    let ctx = db.context(&etl(&name, "ephemeral", ""), system()).await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    for _ in 0..5 {
        let saga = |lease: credrotd::ledger::Lease| {
            let (ctx, account) = (&ctx, &account);
            async move {
                rotation::rotate_leased(ctx, &lease, account, rotation::Trigger::Explicit).await
            }
        };
        let one = ctx.with_lease(&name, Duration::ZERO, saga);
        let two = ctx.with_lease(&name, Duration::ZERO, saga);
        let (r1, r2) = tokio::join!(one, two);
        let busy = [&r1, &r2]
            .iter()
            .filter(|r| matches!(r, Err(RotationError::Busy(_))))
            .count();
        assert_eq!(busy, 1, "exactly one saga runs: {r1:?} / {r2:?}");
        assert!(r1.is_ok() || r2.is_ok(), "{r1:?} / {r2:?}");
        let creds = ctx.ledger.live(&name).await.unwrap();
        assert_eq!(
            creds
                .iter()
                .filter(|c| c.state == CredState::Current)
                .count(),
            1,
            "{creds:?}"
        );
        assert!(creds.len() <= 2, "{creds:?}");
        let p = db.published(&name);
        db.login(&p.username, p.password.expose())
            .await
            .expect("the store's credential logs in");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_static_rotation_puts_the_old_password_back() {
    // Needs a superuser: only a superuser may read the old verifier (pg_authid).
    let db = TestDb::new_superuser().await;
    setup(&db).await;
    let name = db.name("st");
    let role = db.name("st_svc");
    db.exec(&format!("CREATE ROLE {role} LOGIN CONNECTION LIMIT 1"))
        .await;
    let extra = format!("    role: {role}\n    overlap: 0\n");
    let ctx = db.context(&etl(&name, "static", &extra), system()).await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let v1 = db.published(&name);
    // The application holds the role's only connection: verification of the new
    // password fails ("too many connections"), after the password was replaced.
    let app = db.login(&v1.username, v1.password.expose()).await.unwrap();
    let err = rotation::rotate(&ctx, &account).await.unwrap_err();
    assert!(err.to_string().contains("too many connections"), "{err}");
    app.close().await.unwrap();
    assert_eq!(db.published(&name).version, 1, "the store still holds v1");
    db.login(&v1.username, v1.password.expose())
        .await
        .expect("v1's password was restored, so what the store holds logs in");
    let creds = ctx.ledger.credentials(&name).await.unwrap();
    assert_eq!(
        (creds[0].state, creds[1].state),
        (CredState::Current, CredState::Aborted)
    );
}

/// The same failure with a non-superuser admin (managed PostgreSQL), which may
/// not read the old verifier: the password the store serves is read back from
/// the store and set again, so the store's credential keeps logging in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_static_rotation_without_a_superuser_puts_the_stored_password_back() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("stn");
    let role = db.name("stn_svc");
    db.exec(&format!("CREATE ROLE {role} LOGIN CONNECTION LIMIT 1"))
        .await;
    let extra = format!("    role: {role}\n    overlap: 0\n");
    let ctx = db.context(&etl(&name, "static", &extra), system()).await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let v1 = db.published(&name);
    let app = db.login(&v1.username, v1.password.expose()).await.unwrap();
    let err = rotation::rotate(&ctx, &account).await.unwrap_err();
    assert!(err.to_string().contains("too many connections"), "{err}");
    app.close().await.unwrap();
    assert_eq!(db.published(&name).version, 1, "the store still holds v1");
    db.login(&v1.username, v1.password.expose())
        .await
        .expect("what the store holds logs in again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_routines_of_a_schema_include_procedures() {
    let db = TestDb::new().await;
    setup(&db).await;
    db.exec("CREATE PROCEDURE ops.nightly() LANGUAGE sql AS 'SELECT 1'; REVOKE EXECUTE ON PROCEDURE ops.nightly() FROM PUBLIC").await;
    let name = db.name("rt");
    let accounts = format!(
        "  {name}:\n    database: main\n    grants:\n\
         \x20     - {{ schema: ops, privileges: [USAGE] }}\n\
         \x20     - {{ schema: ops, functions: \"*\", privileges: [EXECUTE] }}\n"
    );
    let ctx = db.context(&accounts, system()).await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let p = db.published(&name);
    let mut c = db.login(&p.username, p.password.expose()).await.unwrap();
    c.execute("CALL ops.nightly()")
        .await
        .expect("procedures are granted too");
    c.close().await.unwrap();
    // `ops` belongs to the superuser, whose default privileges the
    // non-superuser admin may not change: functions created later are granted
    // at the next rotation, and reconciliation says so instead of failing.
    let r = ctx.engines["main"]
        .reconcile(&account, false)
        .await
        .unwrap();
    assert!(r.changes.is_empty(), "{r:#?}");
    assert_eq!(r.stuck.len(), 1, "{r:#?}");
    assert!(
        r.stuck[0].what.starts_with("ALTER DEFAULT PRIVILEGES FOR ROLE \"credrotd_admin\" IN SCHEMA \"ops\" GRANT EXECUTE ON FUNCTIONS")
            && r.stuck[0].error.contains("permission denied to change default privileges"),
        "{r:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_promotion_extends_the_predecessor_to_the_end_of_its_overlap() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("late");
    let clock = ManualClock::new(Utc::now());
    let extra = "    schedule: \"0 0 * * * *\"\n    overlap: 30m\n    expiry_margin: 5m\n";
    let ctx = db
        .context(&etl(&name, "ephemeral", extra), Arc::new(clock.clone()))
        .await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let v1 = ctx.ledger.live(&name).await.unwrap().remove(0);
    // Rotations kept failing; the next one succeeds ten minutes before v1 dies,
    // so its 30-minute overlap would be cut short by v1's own expiry.
    clock.set(v1.expires_at - chrono::Duration::minutes(10));
    let r = rotation::rotate(&ctx, &account).await.unwrap();
    let (prev_user, retire_at) = r.previous.unwrap();
    assert_eq!(prev_user, v1.username);
    assert!(retire_at > v1.expires_at);
    let vu = valid_until(&db, &v1.username).await.unwrap();
    assert_eq!(
        vu.timestamp(),
        retire_at.timestamp(),
        "VALID UNTIL now covers the overlap"
    );
    let v1_now = ctx.ledger.get(v1.id).await.unwrap();
    assert_eq!(
        v1_now.expires_at.timestamp(),
        retire_at.timestamp(),
        "and the ledger says so"
    );
}

/// A saga that dies half-way records no failure, so the expiry guard never
/// sees it: a daemon killed during every attempt (a crash loop, an OOM) would
/// let the credential the stores serve run out while each successor is rolled
/// back. Every saga, and recovery, first extends a current credential that
/// would expire within one step (`max(retry_max, overlap) + expiry_margin`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_that_dies_half_way_has_first_extended_the_current_credential() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("dying");
    let clock = ManualClock::new(Utc::now());
    let extra = "    schedule: \"0 0 * * * *\"\n    overlap: 10m\n    expiry_margin: 5m\n";
    let accounts = etl(&name, "ephemeral", extra);
    let ctx = db.context(&accounts, Arc::new(clock.clone())).await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let v1 = ctx.ledger.live(&name).await.unwrap().remove(0);
    let step = chrono::Duration::minutes(15);

    // Far from its expiry, a saga leaves the current credential alone.
    let mut crashing = db.context(&accounts, Arc::new(clock.clone())).await;
    crashing.crash_after = Some(CredState::Created);
    let err = rotation::rotate(&crashing, &account).await.unwrap_err();
    assert!(matches!(err, RotationError::Crash(_)), "{err}");
    assert_eq!(
        valid_until(&db, &v1.username).await.unwrap().timestamp(),
        v1.expires_at.timestamp()
    );
    rotation::recover_account(&ctx, &account).await.unwrap();

    // Two minutes before it expires, a saga starts and dies before promoting.
    let now = v1.expires_at - chrono::Duration::minutes(2);
    clock.set(now);
    let err = rotation::rotate(&crashing, &account).await.unwrap_err();
    assert!(matches!(err, RotationError::Crash(_)), "{err}");
    let vu = valid_until(&db, &v1.username).await.unwrap();
    assert_eq!(
        vu.timestamp(),
        (now + step + step).timestamp(),
        "the current credential was extended to two steps ahead before the saga died"
    );
    let v1_now = ctx.ledger.get(v1.id).await.unwrap();
    assert_eq!(v1_now.state, CredState::Current);
    assert_eq!(
        v1_now.expires_at.timestamp(),
        vu.timestamp(),
        "the ledger says so"
    );
    let state = ctx.ledger.account(&name).await.unwrap();
    assert_eq!(
        state.extended_until.map(|t| t.timestamp()),
        Some(vu.timestamp()),
        "status shows EXTENDED"
    );

    // Recovery does the same when the credential is again within a step.
    let later = vu - chrono::Duration::minutes(1);
    clock.set(later);
    rotation::recover_account(&ctx, &account).await.unwrap();
    assert_eq!(
        valid_until(&db, &v1.username).await.unwrap().timestamp(),
        (later + step + step).timestamp(),
        "recovery extended it too"
    );
    let p = db.published(&name);
    assert_eq!(p.username, v1.username, "the store still serves v1");
    db.login(&p.username, p.password.expose())
        .await
        .expect("and it logs in");
}

/// credrotd's SCRAM-SHA-256 verifier (PBKDF2 from the `pbkdf2` crate) is the
/// one PostgreSQL computes itself for the same password, salt and iterations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_verifiers_are_the_ones_postgresql_computes() {
    let db = TestDb::new().await;
    let mut c = db.admin().await;
    c.execute("SET password_encryption = 'scram-sha-256'")
        .await
        .unwrap();
    for (i, password) in ["pencil", "p\u{e4}ss w\u{f6}rd", "\u{2163}roman-four", "x"]
        .into_iter()
        .enumerate()
    {
        let role = db.name(&format!("scram{i}"));
        c.execute(
            format!(
                "CREATE ROLE {role} PASSWORD '{}'",
                password.replace('\'', "''")
            )
            .as_str(),
        )
        .await
        .unwrap();
        let stored: String =
            sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
                .bind(&role)
                .fetch_one(&mut c)
                .await
                .unwrap();
        c.execute(format!("DROP ROLE {role}").as_str())
            .await
            .unwrap();
        // SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
        let rest = stored.strip_prefix("SCRAM-SHA-256$").unwrap();
        let (params, _) = rest.split_once('$').unwrap();
        let (iterations, salt) = params.split_once(':').unwrap();
        use base64::Engine as _;
        let salt = base64::engine::general_purpose::STANDARD
            .decode(salt)
            .unwrap();
        let ours = credrotd::engine::postgres::scram::verifier_with(
            password.as_bytes(),
            &salt,
            iterations.parse().unwrap(),
        );
        assert_eq!(ours, stored, "password #{i}");
    }
}

// ---- Issue 7: infinity, a CREATEROLE admin, stuck items, owner marker, plan ----

/// A static account on `role`, granting what `etl()` grants.
fn static_account(name: &str, role: &str) -> String {
    etl(
        name,
        "static",
        &format!("    role: {role}\n    overlap: 0\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_until_infinity_and_minus_infinity_never_panic_and_rotate() {
    let db = TestDb::new().await;
    setup(&db).await;
    let (inf, neg, far) = (db.name("inf_svc"), db.name("neg_svc"), db.name("far_svc"));
    db.exec(&format!(
        "CREATE ROLE {inf} LOGIN PASSWORD 'Infinity-Password-123456' VALID UNTIL 'infinity';
         CREATE ROLE {neg} LOGIN PASSWORD 'MinusInfinity-Password-1234' VALID UNTIL '-infinity';
         CREATE ROLE {far} LOGIN VALID UNTIL '290000-01-01';
         COMMENT ON ROLE {far} IS 'credrotd:scoped account=x owner=NOT-VALID seen=zz'"
    ))
    .await;
    let (a_inf, a_neg) = (db.name("inf"), db.name("neg"));
    let ctx = db
        .context(
            &format!(
                "{}{}",
                static_account(&a_inf, &inf),
                static_account(&a_neg, &neg)
            ),
            system(),
        )
        .await;
    let engine = ctx.engines["main"].clone();

    // What the catalog says, decoded without a panic.
    let info = engine.login_info(&inf).await.unwrap().unwrap();
    assert_eq!(
        info,
        credrotd::engine::LoginInfo {
            can_login: true,
            valid_until: None
        },
        "infinity never expires"
    );
    let info = engine.login_info(&neg).await.unwrap().unwrap();
    assert_eq!(info.valid_until, Some(chrono::DateTime::<Utc>::MIN_UTC));
    let info = engine.login_info(&far).await.unwrap().unwrap();
    assert_eq!(info.valid_until, None, "beyond chrono's range is never");
    // A non-superuser cannot read verifiers: no saved password, no error.
    assert!(engine.saved_password(&inf).await.unwrap().is_none());

    // Both rotate, and the new credential logs in with a real expiry.
    for (account, role) in [(&a_inf, &inf), (&a_neg, &neg)] {
        let acc = ctx.account(account).unwrap().clone();
        let r = rotation::rotate(&ctx, &acc).await.unwrap();
        let p = db.published(account);
        assert_eq!(&p.username, role);
        db.login(role, p.password.expose())
            .await
            .unwrap_or_else(|e| panic!("{role}: {e}"));
        let info = engine.login_info(role).await.unwrap().unwrap();
        assert_eq!(
            info.valid_until.map(|t| t.timestamp()),
            Some(r.expires_at.timestamp())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_password_puts_back_infinity_and_minus_infinity() {
    // Needs a superuser: only a superuser may read verifiers from pg_authid.
    let db = TestDb::new_superuser().await;
    let name = db.name("sv");
    let ctx = db
        .context(
            &format!("  {name}:\n    database: main\n    grants: []\n"),
            system(),
        )
        .await;
    let engine = ctx.engines["main"].clone();
    for (until, want) in [
        ("'infinity'", None),
        ("'-infinity'", Some(chrono::DateTime::<Utc>::MIN_UTC)),
    ] {
        let role = db.name("sv_svc");
        db.exec(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD 'Saved-Password-123456789' VALID UNTIL {until}"
        ))
        .await;
        let saved = engine.saved_password(&role).await.unwrap().unwrap();
        assert_eq!(saved.valid_until, want, "{until}");
        assert!(saved.verifier.expose().starts_with("SCRAM-SHA-256$"));
        db.exec(&format!(
            "ALTER ROLE {role} PASSWORD 'Another-Password-123456789' VALID UNTIL '2001-01-01'"
        ))
        .await;
        engine.restore_password(&role, &saved).await.unwrap();
        assert!(
            db.query_bool(&format!(
                "SELECT rolvaliduntil = {until}::timestamptz FROM pg_roles WHERE rolname = '{role}'"
            ))
            .await,
            "{until} is restored as {until}"
        );
        if want.is_none() {
            db.login(&role, "Saved-Password-123456789")
                .await
                .expect("the restored password logs in");
        }
    }
}

/// An ephemeral account with `overlap: 0` that may create tables in `analytics`.
fn ddl_account(name: &str) -> String {
    let mut a = etl(name, "ephemeral", "    overlap: 0\n    allow_ddl: true\n");
    a.push_str("      - { schema: analytics, privileges: [CREATE] }\n");
    a
}

/// Whether `member` is a direct member of `role`.
async fn is_member(db: &TestDb, member: &str, role: &str) -> bool {
    db.query_bool(&format!(
        "SELECT EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = '{member}'::regrole AND m.roleid = '{role}'::regrole)"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_createrole_admin_drops_every_retired_login_even_one_owning_objects() {
    let db = TestDb::new().await;
    assert!(!db.superuser);
    setup(&db).await;
    let name = db.name("cr");
    let ctx = db.context(&ddl_account(&name), system()).await;
    let account = ctx.account(&name).unwrap().clone();
    let mut seen = Vec::new();
    for i in 0..3 {
        rotation::rotate(&ctx, &account)
            .await
            .unwrap_or_else(|e| panic!("rotation {i}: {e}"));
        let p = db.published(&name);
        seen.push(p.username.clone());
        // The login makes a table of its own (as itself, not the scoped role):
        // dropping it needs REASSIGN OWNED, which a CREATEROLE admin may run only
        // once it is a member of both roles.
        let mut c = db.login(&p.username, p.password.expose()).await.unwrap();
        c.execute(format!("SET ROLE NONE; CREATE TABLE analytics.by_login_{i} (id int)").as_str())
            .await
            .unwrap();
        c.close().await.unwrap();
        // overlap 0: the predecessor is retired and dropped, not only disabled.
        let logins: Vec<String> = db
            .roles()
            .await
            .into_iter()
            .filter(|r| r.starts_with(&format!("{name}_")))
            .collect();
        assert_eq!(logins, vec![p.username.clone()], "rotation {i}");
    }
    // What the dropped logins owned now belongs to the scoped role.
    let owners = db
        .query_strings(
            "SELECT tableowner::text FROM pg_tables WHERE schemaname = 'analytics' AND tablename LIKE 'by_login_%' ORDER BY tablename",
        )
        .await;
    assert_eq!(owners, vec![name.clone(), name.clone(), seen[2].clone()]);
    // The admin holds no membership in the scoped role (it had the login's,
    // which goes with the login).
    assert!(!is_member(&db, &db.admin_user, &name).await);
    // Reconciliation leaves what the account owns alone: its owner holds every
    // privilege, and the admin could not grant on it anyway.
    let plan = ctx.engines["main"]
        .reconcile(&account, false)
        .await
        .unwrap();
    for t in ["by_login_0", "by_login_1"] {
        assert!(
            !plan.changes.iter().any(|c| c.0.contains(t))
                && !plan.stuck.iter().any(|s| s.what.contains(t)),
            "{t}: {plan:#?}"
        );
    }
    let creds = ctx.ledger.credentials(&name).await.unwrap();
    assert_eq!(creds.len(), 3);
    assert!(
        creds.iter().all(|c| c.state != CredState::Aborted),
        "{creds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_owning_objects_in_another_database_is_disabled_and_named() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("xdb");
    let ctx = db
        .context(&etl(&name, "ephemeral", "    overlap: 0\n"), system())
        .await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let first = db.published(&name);
    let other = db.other_database("other").await;
    db.exec_in(
        &other,
        &format!(
            "CREATE TABLE stranded (id int); ALTER TABLE stranded OWNER TO \"{}\"",
            first.username
        ),
    )
    .await;

    let engine = ctx.engines["main"].clone();
    let err = engine
        .drop_login(&account, &first.username)
        .await
        .expect_err("objects in another database keep the role");
    match &err {
        credrotd::engine::EngineError::Dependents {
            role, databases, ..
        } => {
            assert_eq!(role, &first.username);
            assert_eq!(databases, &vec![other.clone()]);
        }
        e => panic!("expected Dependents, got {e}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&other) && msg.contains("cannot be dropped"),
        "{msg}"
    );
    // Not dropped, but refused and expired.
    let info = engine.login_info(&first.username).await.unwrap().unwrap();
    assert!(!info.can_login);
    assert!(
        info.valid_until.is_some_and(|t| t <= Utc::now()),
        "{info:?}"
    );
    assert!(db
        .login(&first.username, first.password.expose())
        .await
        .is_err());

    // Once the other database is cleaned up, the drop goes through.
    db.exec_in(
        &other,
        &format!("REASSIGN OWNED BY \"{}\" TO \"{name}\"", first.username),
    )
    .await;
    engine.drop_login(&account, &first.username).await.unwrap();
    assert!(!db.roles().await.contains(&first.username));
    // Dropping what is gone is not an error.
    engine.drop_login(&account, &first.username).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_login_refuses_logins_and_expires_the_password() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("dis");
    let ctx = db.context(&etl(&name, "ephemeral", ""), system()).await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let p = db.published(&name);
    let engine = ctx.engines["main"].clone();
    let before = Utc::now() - chrono::Duration::seconds(5);
    engine.disable_login(&p.username).await.unwrap();
    let info = engine.login_info(&p.username).await.unwrap().unwrap();
    assert!(!info.can_login);
    let until = info.valid_until.expect("expired");
    assert!(until >= before && until <= Utc::now(), "{until}");
    // LOGIN given back by hand does not revive the password.
    db.exec(&format!("ALTER ROLE \"{}\" LOGIN", p.username))
        .await;
    assert!(db.login(&p.username, p.password.expose()).await.is_err());
    // Twice is fine, and keeps the first expiry; a missing role is fine too.
    engine.disable_login(&p.username).await.unwrap();
    let again = engine.login_info(&p.username).await.unwrap().unwrap();
    assert_eq!(again.valid_until, Some(until));
    engine.disable_login(&db.name("nobody")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reports_vanished_objects_and_refused_grants_as_stuck() {
    let db = TestDb::new().await;
    setup(&db).await;
    db.exec("CREATE TABLE public.ledger_lines (id int); CREATE TABLE public.notes (id int)")
        .await;
    let name = db.name("stk");
    let group = db.name("stk_group");
    db.exec(&format!("CREATE ROLE {group} NOLOGIN")).await;
    let accounts = format!(
        "  {name}:\n    database: main\n    member_of: [{group}]\n    grants:\n\
         \x20     - {{ schema: public, privileges: [USAGE] }}\n\
         \x20     - {{ schema: public, tables: [orders, customers, ledger_lines, notes], privileges: [SELECT] }}\n\
         \x20     - {{ schema: reporting, privileges: [USAGE] }}\n"
    );
    db.exec("CREATE SCHEMA reporting").await;
    let ctx = db.context(&accounts, system()).await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let engine = ctx.engines["main"].clone();
    assert_eq!(
        engine.reconcile(&account, false).await.unwrap(),
        Reconciled::default()
    );

    // A migration drops a table and a schema, someone drops the group; the
    // admin loses its rights on one table and its grant option on another.
    // (CASCADE takes the admin's own grants to the scoped role with it.)
    db.exec(&format!(
        "DROP TABLE public.customers; DROP SCHEMA reporting; DROP ROLE {group};
         REVOKE ALL ON public.ledger_lines FROM {admin} CASCADE;
         REVOKE GRANT OPTION FOR SELECT ON public.notes FROM {admin} CASCADE",
        admin = db.admin_user
    ))
    .await;
    let held = db.privilege_role(&name).await;
    db.exec_as_daemon_admin(&format!("REVOKE SELECT ON public.orders FROM {held}"))
        .await;
    let missing = [
        format!("table public.customers (granted to account {name})"),
        format!("schema reporting (granted to account {name})"),
        format!("role {group} (member_of of account {name})"),
    ];
    let plan = engine.reconcile(&account, false).await.unwrap();
    for m in &missing {
        assert!(
            plan.stuck
                .iter()
                .any(|s| &s.what == m && s.error == "does not exist"),
            "plan lacks {m}: {plan:#?}"
        );
    }
    let r = engine.reconcile(&account, true).await.unwrap();
    for m in &missing {
        assert!(r.stuck.iter().any(|s| &s.what == m), "{m}: {r:#?}");
    }
    let q = |t: &str| format!("GRANT SELECT ON TABLE \"public\".\"{t}\" TO \"{held}\"");
    // A hard refusal (no privilege at all) is undone to its savepoint...
    let refused = r
        .stuck
        .iter()
        .find(|s| s.what == q("ledger_lines"))
        .expect("ledger_lines stuck");
    assert!(refused.error.contains("permission denied"), "{refused:?}");
    // ... a grant without grant option only warns, and is found to have no effect.
    let no_effect = r
        .stuck
        .iter()
        .find(|s| s.what == q("notes"))
        .expect("notes stuck");
    assert!(
        no_effect.error.starts_with("had no effect"),
        "{no_effect:?}"
    );
    // ... and the rest applied.
    assert_eq!(r.changes, vec![Change(q("orders"))], "{r:#?}");
    assert_eq!(r.stuck.len(), 5, "{r:#?}");
    assert!(
        db.query_bool(&format!(
            "SELECT has_table_privilege('{name}', 'public.orders', 'SELECT')"
        ))
        .await
    );

    // Issuing goes on: a rotation succeeds and its login works.
    rotation::rotate(&ctx, &account).await.unwrap();
    let p = db.published(&name);
    let mut c = db.login(&p.username, p.password.expose()).await.unwrap();
    c.execute("SELECT count(*) FROM public.orders")
        .await
        .unwrap();
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_marker_is_claimed_read_and_never_mistaken() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("own");
    let ctx = db.context(&etl(&name, "ephemeral", ""), system()).await;
    let account = ctx.account(&name).unwrap().clone();
    let engine = ctx.engines["main"].clone();
    let sql = format!(
        "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = '{name}'"
    );
    let comment = || db.query_strings(&sql);

    assert_eq!(engine.owner(&account).await.unwrap(), None, "no role yet");
    let err = engine
        .claim(&account, "ledger-a", Utc::now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, credrotd::engine::EngineError::Missing { .. }),
        "{err}"
    );
    engine.reconcile(&account, true).await.unwrap();
    assert_eq!(
        comment().await,
        vec![format!("credrotd:scoped account={name}")]
    );
    assert_eq!(
        engine.owner(&account).await.unwrap(),
        Some(Owner::default()),
        "a new role is managed and unowned until claimed"
    );

    let t = chrono::DateTime::from_timestamp(1_900_000_000, 0).unwrap();
    engine.claim(&account, "ledger-a", t).await.unwrap();
    assert_eq!(
        comment().await,
        vec![format!(
            "credrotd:scoped account={name} owner=ledger-a seen=1900000000"
        )]
    );
    assert_eq!(
        engine.owner(&account).await.unwrap(),
        Some(Owner {
            ledger: Some("ledger-a".into()),
            seen: Some(t)
        })
    );
    // Reconcile accepts any owner and leaves the marker alone; so does a rotation.
    engine.reconcile(&account, true).await.unwrap();
    engine.claim(&account, "ledger-b", t).await.unwrap();
    assert_eq!(
        engine
            .owner(&account)
            .await
            .unwrap()
            .unwrap()
            .ledger
            .as_deref(),
        Some("ledger-b")
    );
    for bad in ["", "Ledger", "a_b", "a b", "x' OR '1", &"x".repeat(65)] {
        let err = engine.claim(&account, bad, t).await.unwrap_err();
        assert!(
            matches!(err, credrotd::engine::EngineError::Invalid { .. }),
            "{bad:?}: {err}"
        );
    }
    assert!(
        comment().await[0].contains("owner=ledger-b"),
        "refused ids change nothing"
    );

    // A comment that is not a marker, or not this account's, or odd: not managed.
    for odd in [
        "hand-made".to_owned(),
        format!("credrotd:scoped account={name}x"),
        format!("credrotd:scoped account={name} owner=BAD"),
        format!("credrotd:scoped account={name} owner=a seen=soon"),
    ] {
        db.exec(&format!("COMMENT ON ROLE {name} IS '{odd}'")).await;
        for e in [
            engine.owner(&account).await.unwrap_err(),
            engine.claim(&account, "ledger-a", t).await.unwrap_err(),
            engine.reconcile(&account, false).await.unwrap_err(),
        ] {
            assert!(
                matches!(e, credrotd::engine::EngineError::NotManaged { .. }),
                "{odd}: {e}"
            );
        }
    }
    db.exec(&format!("COMMENT ON ROLE {name} IS NULL")).await;
    assert!(matches!(
        engine.owner(&account).await.unwrap_err(),
        credrotd::engine::EngineError::NotManaged { .. }
    ));
    // The old form is managed and unowned.
    db.exec(&format!(
        "COMMENT ON ROLE {name} IS 'credrotd:scoped account={name}'"
    ))
    .await;
    assert_eq!(
        engine.owner(&account).await.unwrap(),
        Some(Owner::default())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_admin_names_what_a_createrole_admin_lacks() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("chk");
    let fname = db.name("chk_fn");
    let accounts = format!(
        "{}  {fname}:\n    database: main\n    settings: {{ app.region: \"eu\" }}\n    grants:\n\
         \x20     - {{ schema: ops, privileges: [USAGE] }}\n\
         \x20     - {{ schema: ops, functions: \"*\", privileges: [EXECUTE] }}\n",
        etl(&name, "ephemeral", "")
    );
    let ctx = db.context(&accounts, system()).await;
    let engine = ctx.engines["main"].clone();
    let etl_account = ctx.account(&name).unwrap().clone();
    let fn_account = ctx.account(&fname).unwrap().clone();
    let admin = &db.admin_user;

    // Grant options on public, membership in analytics' owner: nothing lacks.
    assert_eq!(engine.check_admin(&[&etl_account]).await.unwrap(), vec![]);

    // One grant option less.
    db.exec(&format!(
        "REVOKE GRANT OPTION FOR SELECT ON public.orders FROM {admin}"
    ))
    .await;
    let gaps = engine.check_admin(&[&etl_account]).await.unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:#?}");
    assert_eq!(
        gaps[0].missing,
        format!("{admin} cannot grant SELECT on table public.orders (no grant option)")
    );
    assert_eq!(
        gaps[0].fix.as_deref(),
        Some(
            format!("GRANT SELECT ON TABLE \"public\".\"orders\" TO \"{admin}\" WITH GRANT OPTION")
                .as_str()
        )
    );

    // ops belongs to the superuser: default privileges cannot be set for it;
    // a placeholder setting needs SET on the parameter.
    let gaps = engine.check_admin(&[&fn_account]).await.unwrap();
    let text: Vec<String> = gaps.iter().map(|g| g.to_string()).collect();
    assert!(
        text.iter()
            .any(|g| g
                .contains("cannot set default privileges for role credrotd_admin in schema ops")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|g| g.contains("may not set parameter app.region")
                && g.ends_with(&format!(
                    "GRANT SET ON PARAMETER \"app\".\"region\" TO \"{admin}\""
                ))),
        "{text:#?}"
    );
    db.grant_parameter("app.region").await;
    let gaps = engine.check_admin(&[&fn_account]).await.unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:#?}");

    // Without pg_signal_backend, sessions of revoked logins cannot be ended.
    db.exec(&format!("REVOKE pg_signal_backend FROM {admin}"))
        .await;
    let gaps = engine.check_admin(&[&etl_account]).await.unwrap();
    assert!(
        gaps.iter()
            .any(|g| g.missing.contains("not a member of pg_signal_backend")
                && g.fix.as_deref()
                    == Some(format!("GRANT pg_signal_backend TO \"{admin}\"").as_str())),
        "{gaps:#?}"
    );

    // ... and the error says why when it tries. (The missing grant option does
    // not keep the account from being issued a credential.)
    rotation::rotate(&ctx, &etl_account).await.unwrap();
    let p = db.published(&name);
    let session = db.login(&p.username, p.password.expose()).await.unwrap();
    let err = engine.terminate_sessions(&p.username).await.unwrap_err();
    assert!(err.to_string().contains("pg_signal_backend"), "{err}");
    session.close().await.unwrap();

    // A superuser lacks nothing.
    let su = TestDb::new_superuser().await;
    let sctx = su
        .context(&accounts.replace(&db.tag, &su.tag), system())
        .await;
    let sacc = sctx.account(&su.name("chk_fn")).unwrap().clone();
    assert_eq!(
        sctx.engines["main"].check_admin(&[&sacc]).await.unwrap(),
        vec![]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_names_a_missing_grant_option_and_still_exits_0() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("pl");
    let path = db.write_inventory(&etl(&name, "ephemeral", ""));
    let plan = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_credrotd"))
            .env_remove("CREDROTD_CONFIG")
            .arg("-c")
            .arg(&path)
            .arg("plan")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = plan();
    assert!(out.contains("admin privileges on main: ok"), "{out}");

    db.exec(&format!(
        "REVOKE GRANT OPTION FOR SELECT ON public.orders FROM {}",
        db.admin_user
    ))
    .await;
    let out = plan();
    assert!(out.contains("admin privileges on main: 1 missing"), "{out}");
    assert!(
        out.contains(&format!(
            "  missing: {} cannot grant SELECT on table public.orders (no grant option)\n    fix: GRANT SELECT ON TABLE \"public\".\"orders\" TO \"{}\" WITH GRANT OPTION",
            db.admin_user, db.admin_user
        )),
        "{out}"
    );
    assert!(db.roles().await.is_empty(), "plan is read-only");
}

/// One owner per account: a second ledger refuses an account whose owner's
/// daemon runs, and takes it over (rebuilding from the store, not issuing over
/// it) once that daemon is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ledger_refuses_a_running_owner_and_takes_over_when_it_is_gone() {
    let db = TestDb::new().await;
    setup(&db).await;
    let name = db.name("own");
    let a = db.context(&etl(&name, "ephemeral", ""), system()).await;
    let account = a.account(&name).unwrap().clone();
    rotation::rotate(&a, &account).await.unwrap();
    let v1 = db.published(&name);
    let a_id = a.ledger.id().to_owned();

    let other = db.dir.path().join("other-ledger.db");
    let b = rotation::Context {
        engines: credrotd::engine::build(&a.inventory).unwrap(),
        stores: credrotd::store::build(&a.inventory),
        inventory: a.inventory.clone(),
        ledger: credrotd::ledger::Ledger::open(&format!("sqlite://{}", other.display()))
            .await
            .unwrap(),
        clock: system(),
        take_over: Default::default(),
        crash_after: None,
    };
    assert_ne!(b.ledger.id(), a_id);
    let err = rotation::rotate(&b, &account).await.unwrap_err();
    assert!(
        matches!(err, rotation::RotationError::NotOwner { .. })
            && err.to_string().contains("owned by another credrotd ledger"),
        "{err}"
    );
    assert_eq!(db.published(&name).version, v1.version, "nothing issued");
    assert!(b.ledger.live(&name).await.unwrap().is_empty());
    db.login(&v1.username, v1.password.expose())
        .await
        .expect("the owner's credential is untouched");

    // The owner's daemon goes away: its presence connection closes.
    drop(a);
    let engine = b.engines["main"].clone();
    let mut released = false;
    for _ in 0..100 {
        if !engine.presence(&a_id).await.unwrap() {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "the server released the owner's presence lock");
    let r = rotation::rotate(&b, &account).await.unwrap();
    assert_eq!(
        r.version,
        v1.version + 1,
        "the stored credential was rebuilt, then rotated"
    );
    assert_eq!(
        r.previous.as_ref().map(|p| p.0.as_str()),
        Some(v1.username.as_str())
    );
    db.login(&v1.username, v1.password.expose())
        .await
        .expect("the old credential gets its overlap");
    let v2 = db.published(&name);
    db.login(&v2.username, v2.password.expose())
        .await
        .expect("the new credential logs in");
    let owner = engine.owner(&account).await.unwrap().unwrap();
    assert_eq!(owner.ledger.as_deref(), Some(b.ledger.id()));
}

// ---- Catch-up: what `audit` finds beyond the grant diff, put right by a rotation ----

/// A database with [`fixtures`], credrotd as a CREATEROLE admin or as the
/// superuser, and account `name` (as [`etl`], with `strategy`) rotated once
/// and without drift.
async fn catch_up_setup(
    superuser: bool,
    suffix: &str,
    strategy: &str,
) -> (
    TestDb,
    credrotd::rotation::Context,
    credrotd::inventory::Account,
    String,
) {
    let db = if superuser {
        TestDb::new_superuser().await
    } else {
        TestDb::new().await
    };
    setup(&db).await;
    let name = db.name(suffix);
    let ctx = db.context(&etl(&name, strategy, ""), system()).await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    assert_eq!(
        ctx.engines["main"]
            .reconcile(&account, false)
            .await
            .unwrap(),
        Reconciled::default(),
        "no drift right after a rotation"
    );
    (db, ctx, account, name)
}

/// The statements `credrotd plan` shows for the account (a read-only
/// reconcile), after checking that each of `expected` is one of them.
async fn plan_lists(
    ctx: &credrotd::rotation::Context,
    account: &credrotd::inventory::Account,
    expected: &[String],
) -> Vec<String> {
    let plan: Vec<String> = ctx.engines["main"]
        .reconcile(account, false)
        .await
        .unwrap()
        .changes
        .into_iter()
        .map(|c| c.0)
        .collect();
    for e in expected {
        assert!(plan.contains(e), "plan lacks {e}: {plan:#?}");
    }
    plan
}

/// A rotation applies the plan; afterwards there is no drift left, and the
/// published credential logs in with exactly the declared privileges.
async fn rotate_clean(
    db: &TestDb,
    ctx: &credrotd::rotation::Context,
    account: &credrotd::inventory::Account,
) {
    rotation::rotate(ctx, account).await.unwrap();
    assert_eq!(
        ctx.engines["main"].reconcile(account, false).await.unwrap(),
        Reconciled::default(),
        "drift left after a rotation"
    );
    let p = db.published(&account.name);
    assert_exact_privileges(db, &p.username, p.password.expose()).await;
}

/// Whether `role` holds anything on a column, the database, a schema, a
/// relation or a routine directly (never counting what it owns).
async fn holds_any_direct_grant(db: &TestDb, role: &str) -> bool {
    db.query_bool(&format!(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute at, aclexplode(at.attacl) a WHERE a.grantee = '{role}'::regrole)
             OR EXISTS (SELECT 1 FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = current_database() AND a.grantee = '{role}'::regrole)
             OR EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(n.nspacl) a WHERE a.grantee = '{role}'::regrole AND n.nspowner <> a.grantee)
             OR EXISTS (SELECT 1 FROM pg_class c, aclexplode(c.relacl) a WHERE a.grantee = '{role}'::regrole AND c.relowner <> a.grantee)
             OR EXISTS (SELECT 1 FROM pg_proc p, aclexplode(p.proacl) a WHERE a.grantee = '{role}'::regrole AND p.proowner <> a.grantee)"
    ))
    .await
}

/// Whether `role` holds a privilege on the current database directly.
async fn holds_database_privilege(db: &TestDb, role: &str) -> bool {
    db.query_bool(&format!(
        "SELECT EXISTS (SELECT 1 FROM pg_database d, aclexplode(d.datacl) a
                        WHERE d.datname = current_database() AND a.grantee = '{role}'::regrole)"
    ))
    .await
}

async fn column_privileges_case(superuser: bool) {
    let (db, ctx, account, name) = catch_up_setup(superuser, "col", "ephemeral").await;
    // analytics belongs to the owner role, whose privileges the CREATEROLE
    // admin has; public to the superuser, which only a superuser admin can
    // act as.
    let mut plant = format!(
        "GRANT UPDATE (kind) ON analytics.events TO {name};
         GRANT SELECT (id), REFERENCES (id) ON analytics.events TO {name}"
    );
    let mut expected = vec![
        format!("REVOKE UPDATE (\"kind\") ON TABLE \"analytics\".\"events\" FROM \"{name}\""),
        format!("REVOKE SELECT (\"id\") ON TABLE \"analytics\".\"events\" FROM \"{name}\""),
        format!("REVOKE REFERENCES (\"id\") ON TABLE \"analytics\".\"events\" FROM \"{name}\""),
    ];
    if superuser {
        plant.push_str(&format!(
            "; GRANT SELECT (salary) ON public.payroll TO {name}"
        ));
        expected.push(format!(
            "REVOKE SELECT (\"salary\") ON TABLE \"public\".\"payroll\" FROM \"{name}\""
        ));
    }
    db.exec(&plant).await;
    let plan = plan_lists(&ctx, &account, &expected).await;
    assert_eq!(plan.len(), expected.len(), "{plan:#?}");
    rotate_clean(&db, &ctx, &account).await;
    assert!(
        !db.query_bool(&format!(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute at, aclexplode(at.attacl) a WHERE a.grantee = '{name}'::regrole)"
        ))
        .await,
        "column privileges are gone"
    );
    // The table-level SELECT the inventory declares is still there.
    assert!(
        db.query_bool(&format!(
            "SELECT has_table_privilege('{name}', 'analytics.events', 'SELECT')"
        ))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_revokes_undeclared_column_privileges() {
    column_privileges_case(false).await;
    column_privileges_case(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_revokes_database_privileges_it_can_and_reports_the_rest() {
    // As the superuser: every direct database privilege goes.
    let (db, ctx, account, name) = catch_up_setup(true, "dbp", "ephemeral").await;
    let dbname = &db.dbname;
    db.exec(&format!(
        "GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {dbname} TO {name}"
    ))
    .await;
    let expected: Vec<String> = ["CONNECT", "CREATE", "TEMPORARY"]
        .iter()
        .map(|p| format!("REVOKE {p} ON DATABASE \"{dbname}\" FROM \"{name}\""))
        .collect();
    plan_lists(&ctx, &account, &expected).await;
    rotate_clean(&db, &ctx, &account).await;
    assert!(!holds_database_privilege(&db, &name).await);
    // CONNECT still comes from PUBLIC: the consumer logged in above.

    // As a CREATEROLE admin: the database belongs to the superuser, whose
    // grant only it can revoke. A stuck item with the reason, not an error;
    // the rotation goes on.
    let (db, ctx, account, name) = catch_up_setup(false, "dbp", "ephemeral").await;
    let dbname = &db.dbname;
    db.exec(&format!("GRANT CREATE ON DATABASE {dbname} TO {name}"))
        .await;
    let revoke = format!("REVOKE CREATE ON DATABASE \"{dbname}\" FROM \"{name}\"");
    plan_lists(&ctx, &account, std::slice::from_ref(&revoke)).await;
    let r = ctx.engines["main"].reconcile(&account, true).await.unwrap();
    let stuck = r
        .stuck
        .iter()
        .find(|s| s.what == revoke)
        .unwrap_or_else(|| panic!("{r:#?}"));
    assert!(
        stuck.error.starts_with("had no effect")
            && stuck.error.contains("granted by credrotd_admin")
            && stuck.error.contains("cannot act as credrotd_admin"),
        "{stuck:?}"
    );
    rotation::rotate(&ctx, &account).await.unwrap();
    let p = db.published(&name);
    assert_exact_privileges(&db, &p.username, p.password.expose()).await;
    // Once the database belongs to a role whose privileges the admin has, its
    // grants are that role's, and the next rotation revokes them.
    db.exec(&format!("ALTER DATABASE {dbname} OWNER TO {}", db.owner))
        .await;
    plan_lists(&ctx, &account, &[revoke]).await;
    rotate_clean(&db, &ctx, &account).await;
    assert!(!holds_database_privilege(&db, &name).await);
}

async fn grant_option_case(superuser: bool) {
    let (db, ctx, account, name) = catch_up_setup(superuser, "gopt", "ephemeral").await;
    // The declared privileges are the privilege role's.
    let held = db.privilege_role(&name).await;
    let mut plant = format!(
        "GRANT SELECT, INSERT ON analytics.events TO {held} WITH GRANT OPTION;
         GRANT USAGE ON SCHEMA analytics TO {held} WITH GRANT OPTION"
    );
    let mut expected = vec![
        format!("REVOKE GRANT OPTION FOR SELECT ON TABLE \"analytics\".\"events\" FROM \"{held}\""),
        format!("REVOKE GRANT OPTION FOR INSERT ON TABLE \"analytics\".\"events\" FROM \"{held}\""),
        format!("REVOKE GRANT OPTION FOR USAGE ON SCHEMA \"analytics\" FROM \"{held}\""),
    ];
    if superuser {
        plant.push_str(&format!(
            "; GRANT SELECT ON public.orders TO {held} WITH GRANT OPTION"
        ));
        expected.push(format!(
            "REVOKE GRANT OPTION FOR SELECT ON TABLE \"public\".\"orders\" FROM \"{held}\""
        ));
    }
    db.exec(&plant).await;
    let plan = plan_lists(&ctx, &account, &expected).await;
    assert_eq!(plan.len(), expected.len(), "{plan:#?}");
    rotate_clean(&db, &ctx, &account).await;
    let mut checks = vec![
        ("analytics.events", "SELECT"),
        ("analytics.events", "INSERT"),
    ];
    if superuser {
        checks.push(("public.orders", "SELECT"));
    }
    for (table, privilege) in checks {
        assert!(
            db.query_bool(&format!(
                "SELECT has_table_privilege('{name}', '{table}', '{privilege}')
                    AND NOT has_table_privilege('{name}', '{table}', '{privilege} WITH GRANT OPTION')"
            ))
            .await,
            "{privilege} on {table} is kept, its grant option is not"
        );
    }
    assert!(
        db.query_bool(&format!(
            "SELECT has_schema_privilege('{name}', 'analytics', 'USAGE')
                AND NOT has_schema_privilege('{name}', 'analytics', 'USAGE WITH GRANT OPTION')"
        ))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_revokes_grant_options_and_keeps_the_privileges() {
    grant_option_case(false).await;
    grant_option_case(true).await;
}

async fn login_grants_case(superuser: bool, strategy: &str) {
    let (db, ctx, account, name) = catch_up_setup(superuser, "lg", strategy).await;
    let login = db.published(&name).username;
    let mut plant = format!(
        "GRANT UPDATE, DELETE ON analytics.events TO {login};
         GRANT SELECT (kind) ON analytics.events TO {login};
         GRANT CREATE ON SCHEMA analytics TO {login};
         GRANT UPDATE ON SEQUENCE analytics.events_id_seq TO {login}"
    );
    let mut expected = vec![
        format!("REVOKE UPDATE ON TABLE \"analytics\".\"events\" FROM \"{login}\""),
        format!("REVOKE DELETE ON TABLE \"analytics\".\"events\" FROM \"{login}\""),
        format!("REVOKE SELECT (\"kind\") ON TABLE \"analytics\".\"events\" FROM \"{login}\""),
        format!("REVOKE CREATE ON SCHEMA \"analytics\" FROM \"{login}\""),
        format!("REVOKE UPDATE ON SEQUENCE \"analytics\".\"events_id_seq\" FROM \"{login}\""),
    ];
    if superuser {
        plant.push_str(&format!(
            "; GRANT SELECT ON public.payroll TO {login};
             GRANT EXECUTE ON FUNCTION ops.refresh_stats(int) TO {login};
             GRANT TEMPORARY ON DATABASE {} TO {login}",
            db.dbname
        ));
        expected.extend([
            format!("REVOKE SELECT ON TABLE \"public\".\"payroll\" FROM \"{login}\""),
            format!(
                "REVOKE EXECUTE ON ROUTINE \"ops\".\"refresh_stats\"(n integer) FROM \"{login}\""
            ),
            format!(
                "REVOKE TEMPORARY ON DATABASE \"{}\" FROM \"{login}\"",
                db.dbname
            ),
        ]);
    }
    db.exec(&plant).await;
    let plan = plan_lists(&ctx, &account, &expected).await;
    assert_eq!(plan.len(), expected.len(), "{plan:#?}");
    rotate_clean(&db, &ctx, &account).await;
    // The login that held them (still within its overlap, or the idle twin)
    // holds nothing of its own any more, nor does the new one.
    assert!(
        !holds_any_direct_grant(&db, &login).await,
        "{login} still holds a direct grant"
    );
    let current = db.published(&name).username;
    assert!(!holds_any_direct_grant(&db, &current).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_revokes_direct_grants_to_the_accounts_logins() {
    login_grants_case(false, "ephemeral").await;
    login_grants_case(true, "alternating").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_grant_is_revoked_as_the_grantor_the_admin_is_a_member_of() {
    let (db, ctx, account, name) = catch_up_setup(false, "gb", "ephemeral").await;
    let admin = &db.admin_user;
    let grantor = db.name("grantor");
    let stranger = db.name("stranger");
    // Two roles that may hand on SELECT on customers and payroll (owned by the
    // superuser); the admin is a member of one of them only.
    db.exec(&format!(
        "CREATE ROLE {grantor} NOLOGIN; CREATE ROLE {stranger} NOLOGIN;
         GRANT SELECT ON public.customers, public.payroll TO {grantor}, {stranger} WITH GRANT OPTION;
         GRANT {grantor} TO {admin};
         SET ROLE {grantor}; GRANT SELECT ON public.customers TO {name}; RESET ROLE;
         SET ROLE {stranger}; GRANT SELECT ON public.payroll TO {name}; RESET ROLE"
    ))
    .await;
    let as_grantor = format!(
        "SET ROLE \"{grantor}\"; REVOKE SELECT ON TABLE \"public\".\"customers\" FROM \"{name}\"; RESET ROLE"
    );
    let plain = format!("REVOKE SELECT ON TABLE \"public\".\"payroll\" FROM \"{name}\"");
    let plan = plan_lists(&ctx, &account, &[as_grantor.clone(), plain.clone()]).await;
    assert_eq!(plan.len(), 2, "{plan:#?}");

    // Apply: the grantor's grant goes; the stranger's is reported, with why.
    let r = ctx.engines["main"].reconcile(&account, true).await.unwrap();
    assert_eq!(r.changes, vec![Change(as_grantor)], "{r:#?}");
    assert_eq!(r.stuck.len(), 1, "{r:#?}");
    assert_eq!(r.stuck[0].what, plain);
    assert!(
        r.stuck[0].error.starts_with("had no effect")
            && r.stuck[0].error.contains(&format!("granted by {stranger}"))
            && r.stuck[0]
                .error
                .contains(&format!("cannot act as {stranger} (not a member)")),
        "{r:#?}"
    );
    assert!(
        !db.query_bool(&format!(
            "SELECT has_table_privilege('{name}', 'public.customers', 'SELECT')"
        ))
        .await
    );
    // The admin is still itself afterwards (RESET ROLE, or the savepoint).
    let mut c = db.daemon_admin().await;
    let who: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(&who, admin);
    c.close().await.unwrap();

    // Once the admin may act as the stranger too, a rotation revokes its grant.
    db.exec(&format!("GRANT {stranger} TO {admin}")).await;
    plan_lists(
        &ctx,
        &account,
        &[format!("SET ROLE \"{stranger}\"; {plain}; RESET ROLE")],
    )
    .await;
    rotate_clean(&db, &ctx, &account).await;
    assert!(
        !db.query_bool(&format!(
            "SELECT has_table_privilege('{name}', 'public.payroll', 'SELECT')"
        ))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superuser_admin_revokes_as_any_grantor() {
    let (db, ctx, account, name) = catch_up_setup(true, "gbs", "ephemeral").await;
    let grantor = db.name("grantor");
    db.exec(&format!(
        "CREATE ROLE {grantor} NOLOGIN;
         GRANT DELETE ON public.orders TO {grantor} WITH GRANT OPTION;
         SET ROLE {grantor}; GRANT DELETE ON public.orders TO {name}; RESET ROLE"
    ))
    .await;
    plan_lists(
        &ctx,
        &account,
        &[format!(
            "SET ROLE \"{grantor}\"; REVOKE DELETE ON TABLE \"public\".\"orders\" FROM \"{name}\"; RESET ROLE"
        )],
    )
    .await;
    rotate_clean(&db, &ctx, &account).await;
    // The account's DELETE is gone; the grantor keeps its own.
    assert!(
        db.query_bool(&format!(
            "SELECT NOT has_table_privilege('{name}', 'public.orders', 'DELETE')
                AND has_table_privilege('{grantor}', 'public.orders', 'DELETE')"
        ))
        .await
    );
}

async fn other_members_case(superuser: bool) {
    let db = if superuser {
        TestDb::new_superuser().await
    } else {
        TestDb::new().await
    };
    setup(&db).await;
    // A static account: its role is a member of the scoped role by right, and
    // so is another account that declares `member_of` it.
    let name = db.name("mem");
    let role = db.name("mem_svc");
    let reader = db.name("memrd");
    let intruder = db.name("intruder");
    let group = db.name("grp");
    db.exec(&format!("CREATE ROLE {role} LOGIN")).await;
    let accounts = format!(
        "{}  {reader}:\n    database: main\n    member_of: [{name}]\n    grants:\n\
         \x20     - {{ schema: public, privileges: [USAGE] }}\n",
        static_account(&name, &role),
    );
    let ctx = db.context(&accounts, system()).await;
    let engine = ctx.engines["main"].clone();
    let account = ctx.account(&name).unwrap().clone();
    let reader_account = ctx.account(&reader).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    rotation::rotate(&ctx, &reader_account).await.unwrap();
    for a in [&account, &reader_account] {
        assert_eq!(
            engine.reconcile(a, false).await.unwrap(),
            Reconciled::default(),
            "{}",
            a.name
        );
    }
    db.exec(&format!(
        "CREATE ROLE {intruder} LOGIN; CREATE ROLE {group} NOLOGIN;
         GRANT {name} TO {intruder}, {group}"
    ))
    .await;
    let expected = vec![
        format!("REVOKE \"{name}\" FROM \"{group}\""),
        format!("REVOKE \"{name}\" FROM \"{intruder}\""),
    ];
    let plan = plan_lists(&ctx, &account, &expected).await;
    assert_eq!(
        plan, expected,
        "nothing about the static role or the reader"
    );
    rotate_clean(&db, &ctx, &account).await;
    for m in [&intruder, &group] {
        assert!(!is_member(&db, m, &name).await, "{m} is still a member");
    }
    assert!(is_member(&db, &role, &name).await, "the static role");
    assert!(is_member(&db, &reader, &name).await, "a declared member_of");
    assert_eq!(
        engine.reconcile(&reader_account, false).await.unwrap(),
        Reconciled::default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_revokes_members_of_the_scoped_role_that_are_not_its_logins() {
    other_members_case(false).await;
    other_members_case(true).await;
}

/// An alternating login keeps its role settings from turn to turn: a setting
/// the inventory dropped, or one added by hand, is reset at its next turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_left_on_an_alternating_login_are_reset_at_its_next_turn() {
    let db = TestDb::new().await;
    setup(&db).await;
    db.grant_parameter("app.tenant_id").await;
    db.grant_parameter("app.region").await;
    let name = db.name("alts");
    let settings_of = |login: String| {
        let db = &db;
        async move {
            let mut got = db
                .query_strings(&format!(
                    "SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
                     WHERE r.rolname = '{login}' AND s.setdatabase = 0"
                ))
                .await;
            got.sort();
            got
        }
    };
    let both = "    settings: { app.tenant_id: \"1\", app.region: \"eu\" }\n";
    let ctx = db.context(&etl(&name, "alternating", both), system()).await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap();
    let a = format!("{name}_a");
    assert_eq!(
        settings_of(a.clone()).await,
        vec![
            "app.region=eu".to_owned(),
            "app.tenant_id=1".to_owned(),
            format!("role={name}")
        ]
    );
    db.exec(&format!("ALTER ROLE {a} SET search_path = 'x'"))
        .await;

    let one = "    settings: { app.tenant_id: \"1\" }\n";
    let ctx = db.context(&etl(&name, "alternating", one), system()).await;
    let account = ctx.account(&name).unwrap().clone();
    rotation::rotate(&ctx, &account).await.unwrap(); // _b's turn
    rotation::rotate(&ctx, &account).await.unwrap(); // _a's turn again
    assert_eq!(db.published(&name).username, a);
    assert_eq!(
        settings_of(a.clone()).await,
        vec!["app.tenant_id=1".to_owned(), format!("role={name}")]
    );
    let p = db.published(&name);
    db.login(&p.username, p.password.expose())
        .await
        .expect("the current twin logs in");
}

/// Accounts that declare the same grants hold them through one privilege role:
/// a table's ACL gets one entry for all of them (per-account entries stop
/// fitting in the table's catalog row at a few thousand accounts), the scoped
/// roles hold nothing directly, and each login still has exactly its grants.
/// Concurrent first reconciliations of such accounts share the role without
/// failing; an account whose grants change moves to another privilege role, and
/// the one nobody uses any more is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accounts_with_the_same_grants_share_one_privilege_role() {
    let db = TestDb::new().await;
    setup(&db).await;
    let names: Vec<String> = (0..6).map(|i| db.name(&format!("same{i}"))).collect();
    let inventory: String = names.iter().map(|n| etl(n, "ephemeral", "")).collect();
    let ctx = db.context(&inventory, system()).await;
    let engine = ctx.engines["main"].clone();
    let accounts: Vec<_> = names
        .iter()
        .map(|n| ctx.account(n).unwrap().clone())
        .collect();
    // First reconciliations, all at once: one creates the privilege role, the
    // others join it; none fails or is stuck.
    let results =
        futures::future::join_all(accounts.iter().map(|a| engine.reconcile(a, true))).await;
    for r in results {
        let r = r.expect("concurrent reconciliation");
        assert!(r.stuck.is_empty(), "{r:#?}");
    }
    let held = db.privilege_role(&names[0]).await;
    for (n, a) in names.iter().zip(&accounts) {
        assert_eq!(db.privilege_role(n).await, held, "{n}");
        assert!(
            !holds_any_direct_grant(&db, n).await,
            "{n} holds a grant itself"
        );
        rotation::rotate(&ctx, a).await.unwrap();
        let p = db.published(n);
        assert_exact_privileges(&db, &p.username, p.password.expose()).await;
    }
    let entries = |table: &'static str| {
        let db = &db;
        async move {
            db.query_strings(&format!(
                "SELECT pg_get_userbyid(a.grantee)::text || ' ' || a.privilege_type FROM pg_class c, aclexplode(c.relacl) a
                 WHERE c.oid = '{table}'::regclass AND a.grantee <> c.relowner
                   AND pg_get_userbyid(a.grantee) <> '{}' ORDER BY 1",
                db.admin_user
            ))
            .await
        }
    };
    let by = |p: &str| format!("{held} {p}");
    assert_eq!(entries("public.orders").await, vec![by("SELECT")]);
    assert_eq!(
        entries("analytics.events").await,
        vec![by("INSERT"), by("SELECT")]
    );

    // One account drops its grant on public.orders: it moves to a privilege
    // role of its own; the shared one stays for the others.
    let narrower = |a: &credrotd::inventory::Account| {
        let mut a = a.clone();
        a.grants
            .retain(|g| g.schema != "public" || g.objects.is_none());
        a
    };
    let first = narrower(&accounts[0]);
    let r = engine.reconcile(&first, true).await.unwrap();
    assert!(r.stuck.is_empty(), "{r:#?}");
    let other = db.privilege_role(&names[0]).await;
    assert_ne!(other, held);
    assert_eq!(db.privilege_role(&names[1]).await, held);
    assert!(
        !db.query_bool(&format!(
            "SELECT has_table_privilege('{}', 'public.orders', 'SELECT')",
            names[0]
        ))
        .await
    );
    assert!(
        db.query_bool(&format!(
            "SELECT has_table_privilege('{}', 'analytics.events', 'INSERT')",
            names[0]
        ))
        .await
    );
    // When the last account leaves it, the shared role is dropped.
    for a in &accounts[1..] {
        let r = engine.reconcile(&narrower(a), true).await.unwrap();
        assert!(r.stuck.is_empty(), "{r:#?}");
    }
    for n in &names {
        assert_eq!(db.privilege_role(n).await, other, "{n}");
    }
    assert!(
        db.query_bool(&format!(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{held}')"
        ))
        .await,
        "{held} is left behind"
    );
    assert!(entries("public.orders").await.is_empty());
    assert_eq!(
        engine.reconcile(&first, false).await.unwrap(),
        Reconciled::default()
    );
}
