//! The analysis on hand-built catalogs: each rule finds what it should and
//! nothing on a catalog as credrotd leaves it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Duration, TimeZone, Utc};

use super::*;
use crate::engine::catalog::{Attribute, CatalogRole, Managed, Membership};
use crate::engine::{Change, Reconciled};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap()
}

fn role(name: &str) -> CatalogRole {
    CatalogRole {
        name: name.to_owned(),
        can_login: false,
        valid_until: None,
        managed: None,
        dangerous: Vec::new(),
        bootstrap: false,
        drop_sql: format!("DROP ROLE {name}"),
    }
}

fn login(name: &str) -> CatalogRole {
    CatalogRole {
        can_login: true,
        ..role(name)
    }
}

fn managed(mut r: CatalogRole, kind: ManagedKind, account: &str) -> CatalogRole {
    r.managed = Some(Managed {
        kind,
        account: account.to_owned(),
        owner: None,
    });
    r
}

fn table(name: &str) -> Object {
    Object::Table {
        schema: "app".to_owned(),
        name: name.to_owned(),
    }
}

fn grant(grantee: &str, object: Object, privilege: &str) -> Privilege {
    Privilege {
        grantee: grantee.to_owned(),
        object,
        privilege: privilege.to_owned(),
        grantable: false,
        grantor: "owner".to_owned(),
        owner: false,
        revoke_sql: format!("REVOKE {privilege} FROM {grantee}"),
    }
}

fn member(role: &str, member: &str) -> Membership {
    Membership {
        role: role.to_owned(),
        member: member.to_owned(),
        revoke_sql: format!("REVOKE {role} FROM {member}"),
    }
}

/// A database as credrotd leaves it: account `etl` (ephemeral, one live login),
/// account `rep` (alternating, one twin locked), the bootstrap superuser and
/// the admin.
fn clean() -> (Catalog, Declared) {
    let mut postgres = login("postgres");
    postgres.bootstrap = true;
    postgres.dangerous = vec![Attribute {
        name: "SUPERUSER".into(),
        fix: String::new(),
    }];
    let mut admin = login("credrotd_admin");
    admin.dangerous = vec![Attribute {
        name: "CREATEROLE".into(),
        fix: String::new(),
    }];
    let mut etl_login = managed(login("etl_20261129110000"), ManagedKind::Login, "etl");
    etl_login.valid_until = Some(now() + Duration::hours(2));
    let mut rep_a = managed(login("rep_a"), ManagedKind::Alternating, "rep");
    rep_a.valid_until = Some(now() + Duration::hours(2));
    let mut rep_b = managed(role("rep_b"), ManagedKind::Alternating, "rep");
    rep_b.valid_until = Some(now() - Duration::hours(20));
    let catalog = Catalog {
        plan_covers_grants: false,
        server: "PostgreSQL 15".into(),
        admin: "credrotd_admin".into(),
        now: now(),
        roles: vec![
            postgres,
            admin,
            managed(role("etl"), ManagedKind::Scoped, "etl"),
            etl_login,
            managed(role("rep"), ManagedKind::Scoped, "rep"),
            rep_a,
            rep_b,
        ],
        memberships: vec![
            member("etl", "etl_20261129110000"),
            member("rep", "rep_a"),
            member("rep", "rep_b"),
        ],
        privileges: vec![
            grant("etl", table("orders"), "SELECT"),
            grant("rep", table("orders"), "SELECT"),
            grant("rep", table("events"), "INSERT"),
            Privilege {
                owner: true,
                ..grant("postgres", table("orders"), "ALL")
            },
        ],
    };
    let mut accounts = BTreeMap::new();
    accounts.insert(
        "etl".to_owned(),
        DeclaredAccount {
            live: BTreeSet::from(["etl_20261129110000".to_owned()]),
            static_role: None,
        },
    );
    accounts.insert(
        "rep".to_owned(),
        DeclaredAccount {
            live: BTreeSet::from(["rep_a".to_owned()]),
            static_role: None,
        },
    );
    let plans = accounts
        .keys()
        .map(|a| (a.clone(), Ok(Reconciled::default())))
        .collect();
    let declared = Declared {
        database: "main".into(),
        ledger_id: Some("l1".into()),
        ledger_read: true,
        accounts,
        plans,
        activity: None,
        stale_after: Duration::days(30),
    };
    (catalog, declared)
}

fn kinds(r: &Report) -> Vec<(Kind, Severity, String)> {
    r.findings
        .iter()
        .map(|f| (f.kind, f.severity, f.role.clone()))
        .collect()
}

#[test]
fn a_database_as_credrotd_leaves_it_has_no_findings() {
    let (c, d) = clean();
    let r = analyse(&c, &d);
    assert_eq!(kinds(&r), vec![], "{}", r.table());
    assert_eq!(r.exit_code(), 0);
    // The admin and the bootstrap superuser are notes.
    assert!(r
        .notes
        .iter()
        .any(|n| n.role.as_deref() == Some("credrotd_admin") && n.detail.contains("CREATEROLE")));
    assert!(r
        .notes
        .iter()
        .any(|n| n.role.as_deref() == Some("postgres")));
}

#[test]
fn orphans_are_what_the_inventory_or_the_ledger_no_longer_lists() {
    let (mut c, mut d) = clean();
    c.roles
        .push(managed(role("gone"), ManagedKind::Scoped, "gone"));
    c.roles
        .push(managed(login("gone_1"), ManagedKind::Login, "gone"));
    // A login of a declared account the ledger does not know, locked.
    c.roles.push(managed(
        role("etl_20260101000000"),
        ManagedKind::Login,
        "etl",
    ));
    // The waiting twin becomes usable behind credrotd's back.
    c.roles
        .iter_mut()
        .find(|r| r.name == "rep_b")
        .unwrap()
        .can_login = true;
    c.roles
        .iter_mut()
        .find(|r| r.name == "rep_b")
        .unwrap()
        .valid_until = None;
    d.plans.clear();
    let r = analyse(&c, &d);
    let got: BTreeSet<_> = kinds(&r).into_iter().collect();
    let want: BTreeSet<_> = [
        (Kind::Orphan, Severity::Warning, "gone".to_owned()),
        (Kind::Orphan, Severity::Error, "gone_1".to_owned()),
        (
            Kind::Orphan,
            Severity::Warning,
            "etl_20260101000000".to_owned(),
        ),
        (Kind::Orphan, Severity::Error, "rep_b".to_owned()),
    ]
    .into();
    assert_eq!(got, want, "{}", r.table());
    assert_eq!(r.exit_code(), 1);
    let f = r.findings.iter().find(|f| f.role == "gone").unwrap();
    assert_eq!(f.fix.as_deref(), Some("DROP ROLE gone"));
}

#[test]
fn another_ledgers_accounts_are_noted_not_orphans() {
    let (mut c, d) = clean();
    let mut s = managed(role("theirs"), ManagedKind::Scoped, "theirs");
    s.managed.as_mut().unwrap().owner = Some("l2".into());
    c.roles.push(s);
    c.roles.push(managed(
        login("theirs_a"),
        ManagedKind::Alternating,
        "theirs",
    ));
    let r = analyse(&c, &d);
    assert_eq!(kinds(&r), vec![], "{}", r.table());
    assert!(r
        .notes
        .iter()
        .any(|n| n.detail.contains("owned by ledger l2")));
}

#[test]
fn expired_logins_that_still_exist_are_reported_once() {
    let (mut c, d) = clean();
    let mut human = login("alice");
    human.valid_until = Some(now() - Duration::days(3));
    c.roles.push(human);
    // A group role with an old VALID UNTIL cannot log in anyway.
    let mut group = role("readers");
    group.valid_until = Some(now() - Duration::days(3));
    c.roles.push(group);
    // A managed login credrotd refused but could not drop.
    let mut stuck = managed(role("etl_20261128000000"), ManagedKind::Login, "etl");
    stuck.valid_until = Some(now() - Duration::hours(1));
    c.roles.push(stuck);
    let r = analyse(&c, &d);
    let got: BTreeSet<_> = kinds(&r).into_iter().collect();
    let want: BTreeSet<_> = [
        (Kind::Expired, Severity::Warning, "alice".to_owned()),
        // Not live in the ledger: an orphan (not also "expired").
        (
            Kind::Orphan,
            Severity::Warning,
            "etl_20261128000000".to_owned(),
        ),
    ]
    .into();
    assert_eq!(got, want, "{}", r.table());
}

#[test]
fn dangerous_attributes_are_errors_for_superusers_and_warnings_otherwise() {
    let (mut c, d) = clean();
    let mut su = login("ops");
    su.dangerous = vec![
        Attribute {
            name: "SUPERUSER".into(),
            fix: "ALTER ROLE ops NOSUPERUSER".into(),
        },
        Attribute {
            name: "member of pg_read_all_data".into(),
            fix: "REVOKE pg_read_all_data FROM ops".into(),
        },
    ];
    c.roles.push(su);
    let r = analyse(&c, &d);
    assert_eq!(
        kinds(&r),
        vec![
            (Kind::Dangerous, Severity::Error, "ops".to_owned()),
            (Kind::Dangerous, Severity::Warning, "ops".to_owned()),
        ],
        "{}",
        r.table()
    );
    assert_eq!(
        r.findings[0].fix.as_deref(),
        Some("ALTER ROLE ops NOSUPERUSER")
    );
}

#[test]
fn drift_comes_from_the_plan_and_from_what_the_plan_does_not_read() {
    let (mut c, mut d) = clean();
    d.plans.insert(
        "etl".into(),
        Ok(Reconciled {
            changes: vec![Change("REVOKE DELETE ON TABLE app.orders FROM etl".into())],
            stuck: vec![],
        }),
    );
    d.plans
        .insert("rep".into(), Err("role rep is not managed".into()));
    c.privileges
        .push(grant("etl_20261129110000", table("orders"), "DELETE"));
    c.privileges.push(grant(
        "etl",
        Object::Column {
            schema: "app".into(),
            table: "payroll".into(),
            column: "salary".into(),
        },
        "SELECT",
    ));
    c.privileges
        .push(grant("etl", Object::Database("main".into()), "CREATE"));
    c.privileges.push(Privilege {
        grantable: true,
        ..grant("rep", table("events"), "SELECT")
    });
    c.roles.push(login("intruder"));
    c.memberships.push(member("etl", "intruder"));
    let r = analyse(&c, &d);
    let got: Vec<_> = kinds(&r);
    assert_eq!(
        got.iter().filter(|k| k.0 == Kind::Drift).count(),
        7,
        "{}",
        r.table()
    );
    assert_eq!(got[0], (Kind::Drift, Severity::Error, "rep".to_owned()));
    for needle in [
        "REVOKE DELETE ON TABLE app.orders FROM etl",
        "holds a direct grant: DELETE on table app.orders",
        "column privilege",
        "database privilege",
        "WITH GRANT OPTION",
        "intruder is a member",
    ] {
        assert!(
            r.findings.iter().any(|f| f.detail.contains(needle)),
            "{needle}: {}",
            r.table()
        );
    }
}

#[test]
fn bloat_groups_identical_and_contained_sets_but_not_scoped_roles_or_inheritance() {
    let (mut c, d) = clean();
    // Two hand-made roles with the same privileges as each other.
    for name in ["app_ro", "report_ro"] {
        c.roles.push(role(name));
        c.privileges.push(grant(name, table("orders"), "SELECT"));
        c.privileges.push(grant(name, table("customers"), "SELECT"));
    }
    // One with more: contains both.
    c.roles.push(role("app_rw"));
    for p in ["SELECT", "INSERT"] {
        c.privileges.push(grant("app_rw", table("orders"), p));
        c.privileges.push(grant("app_rw", table("customers"), p));
    }
    // A role that inherits app_ro and adds one: by design, not bloat.
    c.roles.push(role("app_ro_plus"));
    c.memberships.push(member("app_ro", "app_ro_plus"));
    c.privileges
        .push(grant("app_ro_plus", table("events"), "SELECT"));
    let r = analyse(&c, &d);
    let bloat: Vec<&Finding> = r
        .findings
        .iter()
        .filter(|f| f.kind == Kind::Bloat)
        .collect();
    assert!(
        bloat
            .iter()
            .any(|f| f.detail.contains("roles app_ro, report_ro hold the same 2")),
        "{}",
        r.table()
    );
    assert!(
        bloat
            .iter()
            .any(|f| f.role == "app_ro" && f.detail.contains("also held by app_rw")),
        "{}",
        r.table()
    );
    assert!(
        bloat
            .iter()
            .any(|f| f.role == "report_ro" && f.detail.contains("also held by app_rw")),
        "{}",
        r.table()
    );
    assert!(
        !bloat
            .iter()
            .any(|f| f.detail.contains("app_ro_plus") && f.role == "app_ro"),
        "{}",
        r.table()
    );
    // etl's SELECT on orders is within rep's set: both scoped, not reported.
    assert!(
        !bloat.iter().any(|f| f.role == "etl" || f.role == "rep"),
        "{}",
        r.table()
    );
    assert!(bloat.iter().all(|f| f.severity == Severity::Info));
    assert_eq!(r.exit_code(), 0);
}

#[test]
fn stale_needs_a_long_enough_window_then_names_unused_logins_and_accounts() {
    let (mut c, mut d) = clean();
    c.roles.push(login("batch"));
    c.roles.push(login("webapp"));
    d.activity = Some(Activity {
        since: now() - Duration::days(10),
        last_seen: BTreeMap::new(),
    });
    let r = analyse(&c, &d);
    assert_eq!(kinds(&r), vec![], "{}", r.table());
    assert!(r.notes.iter().any(|n| n.detail.contains("sampled since")));

    d.activity = Some(Activity {
        since: now() - Duration::days(40),
        last_seen: BTreeMap::from([
            ("webapp".to_owned(), now() - Duration::days(1)),
            ("rep_a".to_owned(), now() - Duration::hours(1)),
            ("etl_20261129110000".to_owned(), now() - Duration::days(35)),
        ]),
    });
    let r = analyse(&c, &d);
    let got: BTreeSet<_> = kinds(&r).into_iter().collect();
    let want: BTreeSet<_> = [
        (Kind::Stale, Severity::Warning, "batch".to_owned()),
        (Kind::Stale, Severity::Warning, "etl".to_owned()),
    ]
    .into();
    assert_eq!(got, want, "{}", r.table());
}

#[test]
fn who_can_follows_memberships_and_names_the_chain() {
    let (mut c, _) = clean();
    c.roles.push(role("readers"));
    c.roles.push(role("analysts"));
    c.roles.push(login("bob"));
    c.privileges
        .push(grant("readers", table("payroll"), "SELECT"));
    c.memberships.push(member("readers", "analysts"));
    c.memberships.push(member("analysts", "bob"));
    c.privileges.push(Privilege {
        owner: true,
        ..grant("credrotd_admin", table("payroll"), "ALL")
    });
    let targets = resolve(&c, "app.payroll");
    assert_eq!(targets, vec![table("payroll")]);
    let got = who_can(&c, "select", &targets);
    let by: BTreeMap<&str, &Holder> = got.iter().map(|h| (h.role.as_str(), h)).collect();
    assert_eq!(by["bob"].chain, vec!["bob", "analysts", "readers"]);
    assert!(by["bob"].can_login);
    assert_eq!(by["readers"].via, "SELECT on table app.payroll");
    assert_eq!(by["credrotd_admin"].via, "owner of table app.payroll");
    assert_eq!(by["postgres"].via, "SUPERUSER");
    assert!(!by.contains_key("etl"), "{got:?}");
    // INSERT: nobody but the owner and superusers.
    let got = who_can(&c, "INSERT", &targets);
    let roles: BTreeSet<&str> = got.iter().map(|h| h.role.as_str()).collect();
    assert_eq!(roles, BTreeSet::from(["credrotd_admin", "postgres"]));
}

#[test]
fn a_database_wide_grant_covers_its_tables_for_who_can() {
    let (mut c, _) = clean();
    c.roles.push(login("dba@%"));
    c.privileges
        .push(grant("dba@%", Object::Schema("app".into()), "SELECT"));
    c.roles.push(login("root@localhost"));
    c.privileges
        .push(grant("root@localhost", Object::Server, "SELECT"));
    let got = who_can(&c, "SELECT", &[table("orders")]);
    let roles: BTreeSet<&str> = got.iter().map(|h| h.role.as_str()).collect();
    assert!(
        roles.contains("dba@%")
            && roles.contains("root@localhost")
            && roles.contains("etl_20261129110000"),
        "{got:?}"
    );
}

#[test]
fn the_json_report_has_findings_and_counts_cover_every_pair() {
    let (mut c, d) = clean();
    c.roles
        .push(managed(role("gone"), ManagedKind::Scoped, "gone"));
    let r = analyse(&c, &d);
    let v: serde_json::Value = serde_json::to_value(&r).unwrap();
    let f = &v["findings"][0];
    assert_eq!(f["kind"], "orphan");
    assert_eq!(f["severity"], "warning");
    assert_eq!(f["database"], "main");
    assert_eq!(f["role"], "gone");
    assert!(f["fix"].is_string());
    assert_eq!(r.counts().len(), 18);
    assert_eq!(r.counts()[&(Kind::Orphan, Severity::Warning)], 1);
}

#[test]
fn where_the_plan_corrects_everything_drift_comes_from_the_plan_alone() {
    let (mut c, mut d) = clean();
    c.plan_covers_grants = true;
    c.privileges
        .push(grant("etl", Object::Database("main".into()), "CREATE"));
    c.roles.push(login("intruder"));
    c.memberships.push(member("etl", "intruder"));
    d.plans.insert(
        "etl".into(),
        Ok(Reconciled {
            changes: vec![Change("REVOKE CREATE ON DATABASE main FROM etl".into())],
            stuck: vec![crate::engine::Stuck {
                what: "REVOKE etl FROM intruder".into(),
                error: "permission denied".into(),
            }],
        }),
    );
    let r = analyse(&c, &d);
    let drift: Vec<&str> = r
        .findings
        .iter()
        .filter(|f| f.kind == Kind::Drift)
        .map(|f| f.detail.as_str())
        .collect();
    assert_eq!(drift.len(), 2, "{}", r.table());
    assert!(drift[0].contains("REVOKE CREATE ON DATABASE main FROM etl"));
    assert!(drift[1].contains("cannot correct it: REVOKE etl FROM intruder: permission denied"));
}
