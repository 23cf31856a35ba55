//! The saga against a real PostgreSQL that checks passwords: every strategy, grants,
//! overlap, expiry, revocation, drift, crash recovery and secret hygiene.
//! Run through `./scripts/test`, which starts the cluster.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::{assert_no_secret, TestDb};
use credrotd::clock::{Clock, ManualClock, SharedClock, SystemClock};
use credrotd::engine::{Change, Reconciled};
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
    assert!(err.to_string().contains("not permitted to log in"), "{err}");
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

    // A live session that owns an object of its own (after RESET ROLE the login
    // role itself is the owner).
    let mut session = db.login(&v1.username, v1.password.expose()).await.unwrap();
    session.execute("RESET ROLE").await.unwrap();
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

    // Someone edits the scoped role by hand, with the admin's rights (a grant
    // the admin made can only be revoked by the admin, a grant option holder).
    db.exec_as_daemon_admin(&format!(
        "GRANT DELETE ON public.orders TO {name}; GRANT SELECT ON public.payroll TO {name};
         REVOKE SELECT ON public.orders FROM {name}; REVOKE {group} FROM {name};
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
        "GRANT SELECT ON TABLE \"public\".\"orders\"",
        "REVOKE DELETE ON TABLE \"public\".\"orders\"",
        "REVOKE SELECT ON TABLE \"public\".\"payroll\"",
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
        engine.reconcile(&account, false).await.unwrap().changes.len(),
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
    db.exec_as_daemon_admin(&format!("REVOKE SELECT ON public.orders FROM {name}"))
        .await;
    let r = engine.reconcile(&account, true).await.unwrap();
    assert_eq!(
        r.changes,
        vec![Change(format!(
            "GRANT SELECT ON TABLE \"public\".\"orders\" TO \"{name}\""
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
    assert!(db.query_bool(&format!(
        "SELECT has_table_privilege('{name}', 'public.orders', 'SELECT')"
    ))
    .await);
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
    let report = rotation::recover_account(&ctx, &account).await.unwrap();
    assert_eq!(report.orphans_dropped, vec![orphan.clone()]);
    assert!(!db.roles().await.contains(&orphan));
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
        ctx.engines["main"].reconcile(&account, false).await.unwrap(),
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
    let db = TestDb::new().await;
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
    assert_eq!(
        ctx.engines["main"].reconcile(&account, false).await.unwrap(),
        Reconciled::default()
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
