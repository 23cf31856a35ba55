//! Row-level security from `row_filter` through the binary against the real
//! PostgreSQL: a credential sees exactly the rows of its filter and cannot
//! write outside it; `plan` shows the policy and a policy changed behind
//! credrotd's back; a table without row-level security is refused.

mod common;

use common::{output_text as text, run_credrotd as run, TestDb};
use sqlx::Connection;

fn account(name: &str, table: &str, privileges: &str, filter: &str) -> String {
    format!(
        "  {name}:\n    database: main\n    grants:\n\
         \x20     - {{ schema: public, privileges: [USAGE] }}\n\
         \x20     - {{ schema: public, tables: [{table}], privileges: [{privileges}], row_filter: \"{filter}\" }}\n"
    )
}

async fn rows_seen(db: &TestDb, account: &str, table: &str) -> Vec<i32> {
    let p = db.published(account);
    let mut c = db
        .login(&p.username, p.password.expose())
        .await
        .expect("the published credential logs in");
    let rows: Vec<i32> =
        sqlx::query_scalar(&format!("SELECT tenant_id FROM {table} ORDER BY tenant_id"))
            .fetch_all(&mut c)
            .await
            .unwrap();
    c.close().await.unwrap();
    rows
}

#[tokio::test(flavor = "multi_thread")]
async fn a_credential_sees_and_writes_only_the_rows_of_its_filter() {
    let db = TestDb::new().await;
    // The table belongs to the owner role the admin is a member of: the admin
    // may manage its policies (as on a managed service).
    db.exec(&format!(
        "CREATE TABLE tenant_rows (tenant_id int NOT NULL, v text);
         INSERT INTO tenant_rows VALUES (42, 'a'), (42, 'b'), (7, 'c');
         ALTER TABLE tenant_rows OWNER TO {owner};
         ALTER TABLE tenant_rows ENABLE ROW LEVEL SECURITY",
        owner = db.owner
    ))
    .await;
    let name = db.name("tenant");
    let config = db.write_inventory(&account(
        &name,
        "tenant_rows",
        "SELECT, INSERT",
        "tenant_id = 42",
    ));
    let plan = run(&["plan"], &config);
    assert!(plan.status.success(), "{}", text(&plan));
    assert!(
        text(&plan).contains(&format!(
            "CREATE POLICY \"credrotd_{name}\" ON \"public\".\"tenant_rows\" AS PERMISSIVE FOR ALL TO \"{name}\" USING (tenant_id = 42) WITH CHECK (tenant_id = 42)"
        )),
        "{}",
        text(&plan)
    );
    let out = run(&["rotate", &name], &config);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rows_seen(&db, &name, "tenant_rows").await, vec![42, 42]);

    // Writes: inside the filter yes, outside no.
    let p = db.published(&name);
    let mut c = db.login(&p.username, p.password.expose()).await.unwrap();
    sqlx::raw_sql("INSERT INTO tenant_rows VALUES (42, 'd')")
        .execute(&mut c)
        .await
        .expect("a row inside the filter");
    let err = sqlx::raw_sql("INSERT INTO tenant_rows VALUES (7, 'e')")
        .execute(&mut c)
        .await
        .expect_err("a row outside the filter is refused");
    assert!(err.to_string().contains("row-level security"), "{err}");
    c.close().await.unwrap();

    // Reconciled: nothing more to do.
    let plan = text(&run(&["plan"], &config));
    assert!(!plan.contains("POLICY"), "{plan}");

    // Someone widens the policy behind credrotd's back: plan shows it, the next
    // rotation puts the filter back.
    db.exec(&format!(
        "ALTER POLICY credrotd_{name} ON tenant_rows USING (true)"
    ))
    .await;
    assert_eq!(
        rows_seen(&db, &name, "tenant_rows").await,
        vec![7, 42, 42, 42]
    );
    let plan = text(&run(&["plan"], &config));
    assert!(
        plan.contains(&format!(
            "DROP POLICY IF EXISTS \"credrotd_{name}\" ON \"public\".\"tenant_rows\"; CREATE POLICY"
        )),
        "{plan}"
    );
    let out = run(&["rotate", &name], &config);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rows_seen(&db, &name, "tenant_rows").await, vec![42, 42, 42]);

    // The filter changes in the inventory: the policy follows (SELECT only now).
    let config = db.write_inventory(&account(&name, "tenant_rows", "SELECT", "tenant_id = 7"));
    let out = run(&["rotate", &name], &config);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rows_seen(&db, &name, "tenant_rows").await, vec![7]);
    let cmds = db
        .query_strings(&format!(
            "SELECT cmd || ' ' || coalesce(qual, '') FROM pg_policies WHERE policyname = 'credrotd_{name}'"
        ))
        .await;
    assert_eq!(cmds, vec!["SELECT (tenant_id = 7)".to_owned()]);

    // The filter is removed from the inventory: so is the policy (and with
    // row-level security on and no policy, the role sees no rows at all).
    let plain = format!(
        "  {name}:\n    database: main\n    grants:\n\
         \x20     - {{ schema: public, privileges: [USAGE] }}\n\
         \x20     - {{ schema: public, tables: [tenant_rows], privileges: [SELECT] }}\n"
    );
    let config = db.write_inventory(&plain);
    let out = run(&["rotate", &name], &config);
    assert!(out.status.success(), "{}", text(&out));
    assert!(db
        .query_strings(&format!(
            "SELECT policyname::text FROM pg_policies WHERE policyname = 'credrotd_{name}'"
        ))
        .await
        .is_empty());
    assert_eq!(
        rows_seen(&db, &name, "tenant_rows").await,
        Vec::<i32>::new()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filtered_table_without_row_level_security_is_refused_and_never_enabled() {
    let db = TestDb::new().await;
    db.exec(&format!(
        "CREATE TABLE open_rows (tenant_id int, v text);
         INSERT INTO open_rows VALUES (42, 'a'), (7, 'b');
         ALTER TABLE open_rows OWNER TO {owner}",
        owner = db.owner
    ))
    .await;
    let name = db.name("open");
    let config = db.write_inventory(&account(&name, "open_rows", "SELECT", "tenant_id = 42"));
    let plan = run(&["plan"], &config);
    assert!(
        text(&plan).contains("row-level security is off"),
        "{}",
        text(&plan)
    );
    let out = run(&["rotate", &name], &config);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("ENABLE ROW LEVEL SECURITY"),
        "the error says what to do: {}",
        text(&out)
    );
    // Nothing issued that could read every row, and RLS still off.
    assert!(!db.secrets_dir().join(format!("{name}.json")).exists());
    assert!(
        !db.query_bool("SELECT relrowsecurity FROM pg_class WHERE relname = 'open_rows'")
            .await
    );
}
