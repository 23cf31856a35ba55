//! `credrotd import`: a draft inventory from what a database holds today, so a
//! team adopts credrotd without writing YAML by hand.
//!
//! Read-only: it reads each database's catalog (the same snapshot `audit`
//! reads) and writes text. Each login role that looks like automation becomes
//! a `static` account with `adopt: true` (credrotd takes the role over as it
//! is; its first rotation comes at the next scheduled fire), with the grants
//! the role holds directly today and its group roles as `member_of`. What the
//! inventory cannot or should not say is a comment next to the account:
//! excessive privileges (superuser-like attributes, grant options, DDL,
//! ownership), and roles that look unused. Logins that look like people,
//! superusers, the admin role and roles credrotd already manages are listed
//! in comments, not imported.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::engine::catalog::{Catalog, Object};
use crate::engine::postgres::rules::DANGEROUS_MEMBERSHIPS;
use crate::inventory::{EngineKind, DDL_PRIVILEGES};

/// One database to import, with its catalog.
pub struct Source {
    /// Its name in the inventory.
    pub name: String,
    pub engine: EngineKind,
    /// The admin URL as the inventory will hold it (no password).
    pub url: String,
    pub catalog: Catalog,
}

/// What the draft says beyond the catalogs.
pub struct Options {
    /// `production`, `staging`, `development`.
    pub environment: String,
    /// When the catalogs were read (the header says so).
    pub at: DateTime<Utc>,
}

/// The draft inventory for `sources`.
pub fn draft(sources: &[Source], options: &Options) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Draft inventory written by `credrotd import` on {}.",
        options.at.format("%Y-%m-%d %H:%M UTC")
    );
    out.push_str(
        "# Review it before use: fill in each TODO (purpose, owner), read the\n\
         # EXCESSIVE and UNUSED comments, then `credrotd check` and `credrotd plan`.\n\
         # Each account adopts its existing login as it is (strategy static,\n\
         # adopt: true): nothing changes before its first scheduled rotation.\n\
         # Editors: `credrotd schema > inventory.schema.json` and add\n\
         # `# yaml-language-server: $schema=inventory.schema.json` at the top.\n",
    );
    out.push_str("version: 1\n");
    let _ = writeln!(out, "environment: {}", yaml_str(&options.environment));
    out.push_str("state: sqlite:///var/lib/credrotd/state.db\n");
    out.push_str(
        "defaults: { schedule: \"0 0 3 * * *\", overlap: 1h, expiry_margin: 1h, store: local }\n\n",
    );
    out.push_str("databases:\n");
    for s in sources {
        let _ = writeln!(out, "  {}:", yaml_str(&s.name));
        let _ = writeln!(out, "    # {}", one_line(&s.catalog.server));
        let _ = writeln!(out, "    engine: {}", s.engine.as_str());
        let _ = writeln!(out, "    url: {}", yaml_str(&s.url));
        let _ = writeln!(
            out,
            "    # The admin password ({}): under systemd, LoadCredential= puts it in $CREDENTIALS_DIRECTORY.",
            one_line(&s.catalog.admin)
        );
        let _ = writeln!(out, "    password_file: {}", yaml_str(&s.name));
    }
    out.push_str("\nstores:\n");
    out.push_str("  local: { kind: file, dir: /run/credrotd/secrets, mode: \"0440\" }\n\n");
    out.push_str("accounts:\n");
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut accounts = 0;
    let mut notes = Vec::new();
    for s in sources {
        let (drafts, skipped) = accounts_of(s, &mut taken);
        accounts += drafts.len();
        for d in drafts {
            out.push_str(&d);
        }
        notes.extend(skipped);
    }
    if accounts == 0 {
        out.push_str("  {}\n");
    }
    if !notes.is_empty() {
        out.push_str("# Not imported:\n");
        for n in notes {
            let _ = writeln!(out, "#   {n}");
        }
    }
    out
}

/// The accounts drafted from one database, and a line for each role left out.
fn accounts_of(s: &Source, taken: &mut BTreeSet<String>) -> (Vec<String>, Vec<String>) {
    let c = &s.catalog;
    let admin_role = c.admin.split('@').next().unwrap_or(&c.admin);
    let logins: BTreeSet<&str> = c
        .roles
        .iter()
        .filter(|r| r.can_login)
        .map(|r| r.name.as_str())
        .collect();
    let role_names: BTreeSet<&str> = c.roles.iter().map(|r| r.name.as_str()).collect();
    let mut drafts = Vec::new();
    let mut skipped = Vec::new();
    for role in &c.roles {
        let name = role.name.as_str();
        if !role.can_login {
            continue; // a group role: it shows up as `member_of`
        }
        let why_not = if role.bootstrap {
            Some("the server's bootstrap superuser")
        } else if name == c.admin || name == admin_role {
            Some("the admin role credrotd connects as")
        } else if role.managed.is_some() {
            Some("already managed by credrotd")
        } else if role.dangerous.iter().any(|a| a.name == "SUPERUSER") {
            Some("a superuser: credrotd does not hand out superuser credentials")
        } else if looks_like_a_person(name) {
            Some("looks like a person's login, not automation")
        } else if s.engine.is_mysql() {
            Some("MySQL/MariaDB users are not imported yet (only PostgreSQL)")
        } else if crate::inventory::identifier_problem(name).is_some() {
            Some("its name cannot be written in an inventory")
        } else {
            None
        };
        if let Some(why) = why_not {
            skipped.push(format!("{}: {} ({why})", one_line(&s.name), one_line(name)));
            continue;
        }
        let account = account_name(name, taken, &role_names);
        taken.insert(account.clone());
        drafts.push(draft_account(s, name, &account, &logins));
    }
    (drafts, skipped)
}

fn draft_account(s: &Source, role: &str, account: &str, logins: &BTreeSet<&str>) -> String {
    let c = &s.catalog;
    let r = c
        .roles
        .iter()
        .find(|r| r.name == role)
        .expect("the role is in the catalog");
    let mut comments: Vec<String> = Vec::new();
    for a in &r.dangerous {
        comments.push(format!(
            "EXCESSIVE: {} (remove with: {})",
            one_line(&a.name),
            one_line(&a.fix)
        ));
    }
    // Grants this role holds directly, grouped into inventory grants.
    let mut schema_grants: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // (schema, kind) → object → privileges.
    type Objects = BTreeMap<String, BTreeSet<String>>;
    let mut object_grants: BTreeMap<(String, &'static str), Objects> = BTreeMap::new();
    let mut owns = BTreeSet::new();
    for p in c.privileges.iter().filter(|p| p.grantee == role) {
        if p.owner {
            owns.insert(p.object.to_string());
            continue;
        }
        if p.grantable {
            comments.push(format!(
                "EXCESSIVE: {} on {} WITH GRANT OPTION (dropped here: credrotd grants without it)",
                p.privilege, p.object
            ));
        }
        let privilege = p.privilege.to_ascii_uppercase();
        match &p.object {
            Object::Schema(schema) => {
                schema_grants
                    .entry(schema.clone())
                    .or_default()
                    .insert(privilege);
            }
            Object::Table { schema, name }
            | Object::Sequence { schema, name }
            | Object::Routine { schema, name } => {
                let kind = match &p.object {
                    Object::Table { .. } => "tables",
                    Object::Sequence { .. } => "sequences",
                    _ => "functions",
                };
                // PostgreSQL names a function with its argument types; the
                // inventory names it alone.
                let name = name.split('(').next().unwrap_or(name).to_owned();
                object_grants
                    .entry((schema.clone(), kind))
                    .or_default()
                    .entry(name)
                    .or_default()
                    .insert(privilege);
            }
            // Every scoped role may connect; nothing to carry over.
            Object::Database(_) if privilege == "CONNECT" => {}
            other => comments.push(format!(
                "NOT IMPORTED: {privilege} on {other} (the inventory cannot express it; it stays until revoked)"
            )),
        }
    }
    if !owns.is_empty() {
        let first: Vec<&str> = owns.iter().take(3).map(String::as_str).collect();
        let more = if owns.len() > 3 {
            format!(" and {} more", owns.len() - 3)
        } else {
            String::new()
        };
        comments.push(format!(
            "EXCESSIVE: owns {}{more}: ownership stays with the role (not a grant); \
             consider a non-login owner role",
            first.join(", ")
        ));
    }
    // Objects with the same privilege set share a grant.
    let mut by_set: BTreeMap<(String, &'static str, Vec<String>), Vec<String>> = BTreeMap::new();
    for ((schema, kind), objects) in object_grants {
        for (object, privileges) in objects {
            by_set
                .entry((schema.clone(), kind, privileges.into_iter().collect()))
                .or_default()
                .push(object);
        }
    }
    let mut grants = Vec::new();
    let mut ddl = BTreeSet::new();
    for (schema, privileges) in &schema_grants {
        ddl.extend(privileges.iter().filter(|p| is_ddl(p)).cloned());
        grants.push(format!(
            "{{ schema: {}, privileges: [{}] }}",
            yaml_str(schema),
            list(privileges.iter())
        ));
    }
    for ((schema, kind, privileges), objects) in &by_set {
        if *kind != "sequences" {
            ddl.extend(privileges.iter().filter(|p| is_ddl(p)).cloned());
        }
        grants.push(format!(
            "{{ schema: {}, {kind}: [{}], privileges: [{}] }}",
            yaml_str(schema),
            list(objects.iter()),
            list(privileges.iter())
        ));
    }
    if !ddl.is_empty() {
        comments.push(format!(
            "EXCESSIVE: DDL privileges ({}): an application rarely needs them",
            ddl.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    let mut member_of = Vec::new();
    for m in c.memberships.iter().filter(|m| m.member == role) {
        if DANGEROUS_MEMBERSHIPS.contains(&m.role.as_str()) {
            // Already among `dangerous` (with its fix) where the engine
            // reports it; say it once either way.
            if !r.dangerous.iter().any(|a| a.name.contains(&m.role)) {
                comments.push(format!(
                    "EXCESSIVE: member of {} (dropped here)",
                    one_line(&m.role)
                ));
            }
        } else if logins.contains(m.role.as_str()) {
            comments.push(format!(
                "NOT IMPORTED: member of the login role {} (give that role's grants to this account instead)",
                one_line(&m.role)
            ));
        } else if crate::inventory::identifier_problem(&m.role).is_some() {
            comments.push(format!(
                "NOT IMPORTED: member of {} (its name cannot be written in an inventory)",
                one_line(&m.role)
            ));
        } else if let Some(a) = c
            .roles
            .iter()
            .find(|g| g.name == m.role)
            .and_then(|g| g.dangerous.first())
        {
            comments.push(format!(
                "NOT IMPORTED: member of {}, which has {} (credrotd refuses such a group)",
                one_line(&m.role),
                one_line(&a.name)
            ));
        } else if !member_of.contains(&m.role) {
            member_of.push(m.role.clone());
        }
    }
    if grants.is_empty() && member_of.is_empty() && owns.is_empty() {
        comments.push("UNUSED?: holds no privileges and belongs to no role".to_owned());
    }
    if let Some(until) = r.valid_until {
        if until <= c.now {
            comments.push(format!(
                "UNUSED?: its password expired on {}",
                until.format("%Y-%m-%d")
            ));
        }
    }

    let mut out = String::new();
    let _ = writeln!(out, "  {}:", yaml_str(account));
    for comment in &comments {
        let _ = writeln!(out, "    # {}", one_line(comment));
    }
    let _ = writeln!(out, "    database: {}", yaml_str(&s.name));
    let _ = writeln!(
        out,
        "    purpose: {}",
        yaml_str(&format!("TODO: what {role} is used for"))
    );
    let _ = writeln!(
        out,
        "    owner: {}",
        yaml_str(&format!("TODO: the team that owns {role}"))
    );
    out.push_str("    strategy: static\n");
    let _ = writeln!(out, "    role: {}", yaml_str(role));
    out.push_str("    adopt: true\n");
    out.push_str("    overlap: 0 # PostgreSQL changes a static password in place\n");
    if !ddl_free(&comments) {
        out.push_str("    allow_ddl: true\n");
    }
    if grants.is_empty() {
        out.push_str("    grants: []\n");
    } else {
        out.push_str("    grants:\n");
        for g in grants {
            let _ = writeln!(out, "      - {g}");
        }
    }
    if !member_of.is_empty() {
        let _ = writeln!(out, "    member_of: [{}]", list(member_of.iter()));
    }
    out.push('\n');
    out
}

fn ddl_free(comments: &[String]) -> bool {
    !comments.iter().any(|c| c.starts_with("EXCESSIVE: DDL"))
}

fn is_ddl(privilege: &str) -> bool {
    DDL_PRIVILEGES.contains(&privilege)
}

/// `billing_svc` → `billing_svc_account`: the account's name is its scoped
/// role, which must differ from the login and from every existing role, and
/// has at most 40 characters.
fn account_name(role: &str, taken: &BTreeSet<String>, roles: &BTreeSet<&str>) -> String {
    let stem = identifier(role);
    let mut n = 1;
    loop {
        let suffix = if n == 1 {
            "_account".to_owned()
        } else {
            format!("_account{n}")
        };
        let mut name = stem.clone();
        name.truncate(40 - suffix.len());
        name.push_str(&suffix);
        if !taken.contains(&name) && !roles.contains(name.as_str()) {
            return name;
        }
        n += 1;
    }
}

/// `Orders-Prod` → `orders_prod`: lowercase letters, digits and `_`, starting
/// with a letter, as the inventory's names are.
fn identifier(text: &str) -> String {
    let mut base: String = text
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
        base.insert_str(0, "a_");
    }
    base
}

/// The inventory name for a database: `NAME` as given (which must be one), or
/// the URL's database name made into one.
pub fn database_name(given: Option<&str>, from_url: &str) -> Result<String, String> {
    match given {
        Some(n) if crate::inventory::is_name(n) => Ok(n.to_owned()),
        Some(n) => Err(format!(
            "{}: a database's name in the inventory is lowercase letters, digits and _, starting with a letter, at most 40 characters",
            one_line(n)
        )),
        None => {
            let mut name = identifier(from_url);
            name.truncate(40);
            Ok(name)
        }
    }
}

/// A person's login (`jane.doe`, `jdoe@corp`) rather than a service's.
fn looks_like_a_person(name: &str) -> bool {
    name.contains('.') || name.contains('@') || name.contains(' ')
}

/// A YAML scalar for `s`: bare where that is unambiguous, JSON-quoted otherwise.
fn yaml_str(s: &str) -> String {
    let bare = !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '/')
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '_' | '-' | '.' | '/' | ':' | '@' | '?' | '=' | '&')
        })
        && !s.ends_with(':')
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n" | "~"
        );
    if bare {
        return s.to_owned();
    }
    // A double-quoted YAML scalar; what YAML cannot hold as it is (control
    // characters, DEL, C1, U+FFFE/U+FFFF) as an escape.
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' => {
                out.push_str(&format!("\\u{:04X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list<'a>(items: impl Iterator<Item = &'a String>) -> String {
    items.map(|s| yaml_str(s)).collect::<Vec<_>>().join(", ")
}

/// Text for a comment: one line, whatever the catalog held.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::catalog::{
        Attribute, CatalogRole, Managed, ManagedKind, Membership, Privilege,
    };

    fn role(name: &str, login: bool) -> CatalogRole {
        CatalogRole {
            name: name.into(),
            can_login: login,
            valid_until: None,
            managed: None,
            dangerous: Vec::new(),
            bootstrap: false,
            drop_sql: String::new(),
        }
    }

    fn grant(grantee: &str, object: Object, privilege: &str) -> Privilege {
        Privilege {
            grantee: grantee.into(),
            object,
            privilege: privilege.into(),
            grantable: false,
            grantor: "postgres".into(),
            owner: false,
            revoke_sql: String::new(),
        }
    }

    fn table(schema: &str, name: &str) -> Object {
        Object::Table {
            schema: schema.into(),
            name: name.into(),
        }
    }

    fn catalog() -> Catalog {
        let now = "2026-11-29T00:00:00Z".parse().unwrap();
        let mut postgres = role("postgres", true);
        postgres.bootstrap = true;
        let mut root = role("ops_root", true);
        root.dangerous.push(Attribute {
            name: "SUPERUSER".into(),
            fix: "ALTER ROLE \"ops_root\" NOSUPERUSER".into(),
        });
        let mut old = role("legacy_sync", true);
        old.valid_until = Some("2025-01-01T00:00:00Z".parse().unwrap());
        let mut managed = role("orders_api", false);
        managed.managed = Some(Managed {
            kind: ManagedKind::Scoped,
            account: "orders_api".into(),
            owner: None,
        });
        let mut etl = role("etl_svc", true);
        etl.dangerous.push(Attribute {
            name: "CREATEROLE".into(),
            fix: "ALTER ROLE \"etl_svc\" NOCREATEROLE".into(),
        });
        let mut grantable = grant("etl_svc", table("public", "customers"), "SELECT");
        grantable.grantable = true;
        Catalog {
            server: "PostgreSQL 15.19".into(),
            admin: "credrotd_admin".into(),
            now,
            roles: vec![
                postgres,
                role("credrotd_admin", true),
                root,
                old,
                managed,
                etl,
                role("jane.doe", true),
                role("reporting", false),
            ],
            memberships: vec![Membership {
                role: "reporting".into(),
                member: "etl_svc".into(),
                revoke_sql: String::new(),
            }],
            privileges: vec![
                grant("etl_svc", Object::Schema("public".into()), "USAGE"),
                grant("etl_svc", table("public", "orders"), "SELECT"),
                grant("etl_svc", table("public", "orders"), "INSERT"),
                grant("etl_svc", table("public", "items"), "SELECT"),
                grant("etl_svc", table("public", "items"), "INSERT"),
                grantable,
                grant("etl_svc", table("public", "audit_log"), "TRUNCATE"),
                grant("etl_svc", Object::Database("orders".into()), "TEMPORARY"),
                Privilege {
                    owner: true,
                    ..grant("etl_svc", table("public", "etl_state"), "ALL")
                },
                grant(
                    "etl_svc",
                    Object::Sequence {
                        schema: "public".into(),
                        name: "orders_id_seq".into(),
                    },
                    "USAGE",
                ),
                grant(
                    "etl_svc",
                    Object::Routine {
                        schema: "public".into(),
                        name: "refresh(integer)".into(),
                    },
                    "EXECUTE",
                ),
            ],
            plan_covers_grants: true,
        }
    }

    fn source() -> Source {
        Source {
            name: "orders".into(),
            engine: EngineKind::Postgres,
            url: "postgres://credrotd_admin@127.0.0.1:5432/orders".into(),
            catalog: catalog(),
        }
    }

    fn options() -> Options {
        Options {
            environment: "production".into(),
            at: "2026-11-29T12:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn automation_logins_become_adopted_static_accounts_with_todays_grants() {
        let text = draft(&[source()], &options());
        let etl = text
            .split("  etl_svc_account:\n")
            .nth(1)
            .expect("etl_svc imported")
            .split("\n\n")
            .next()
            .unwrap();
        for want in [
            "strategy: static",
            "role: etl_svc",
            "adopt: true",
            "allow_ddl: true",
            "- { schema: public, privileges: [USAGE] }",
            "- { schema: public, tables: [items, orders], privileges: [INSERT, SELECT] }",
            "- { schema: public, tables: [customers], privileges: [SELECT] }",
            "- { schema: public, tables: [audit_log], privileges: [TRUNCATE] }",
            "- { schema: public, sequences: [orders_id_seq], privileges: [USAGE] }",
            "- { schema: public, functions: [refresh], privileges: [EXECUTE] }",
            "member_of: [reporting]",
            "# EXCESSIVE: CREATEROLE (remove with: ALTER ROLE \"etl_svc\" NOCREATEROLE)",
            "# EXCESSIVE: SELECT on table public.customers WITH GRANT OPTION",
            "# EXCESSIVE: DDL privileges (TRUNCATE)",
            "# NOT IMPORTED: TEMPORARY on database orders",
            "# EXCESSIVE: owns table public.etl_state: ownership stays with the role",
        ] {
            assert!(etl.contains(want), "missing {want:?} in:\n{etl}");
        }
        let legacy = text.split("  legacy_sync_account:\n").nth(1).unwrap();
        assert!(
            legacy.contains("# UNUSED?: holds no privileges"),
            "{legacy}"
        );
        assert!(legacy.contains("# UNUSED?: its password expired on 2025-01-01"));
        // Left out, and said why.
        for skipped in [
            "orders: ops_root (a superuser",
            "orders: jane.doe (looks like a person",
            "orders: credrotd_admin (the admin role",
            "orders: postgres (the server's bootstrap superuser)",
        ] {
            assert!(text.contains(skipped), "missing {skipped:?}");
        }
        assert!(
            !text.contains("orders_api"),
            "a managed role is not re-imported"
        );
        assert!(
            !text.contains("reporting_account"),
            "a group role is not an account"
        );
    }

    #[test]
    fn the_draft_passes_check() {
        let text = draft(&[source()], &options());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inventory.yaml");
        match crate::inventory::parse(&path, &text) {
            Ok(checked) => {
                assert_eq!(checked.inventory.accounts.len(), 2, "{text}");
            }
            Err(e) => panic!("{e}\n{text}"),
        }
    }

    #[test]
    fn account_names_are_valid_and_never_a_role_that_exists() {
        let roles: BTreeSet<&str> = ["Billing-Svc", "x_account"].into_iter().collect();
        let mut taken = BTreeSet::new();
        assert_eq!(
            account_name("Billing-Svc", &taken, &roles),
            "billing_svc_account"
        );
        taken.insert("billing_svc_account".to_owned());
        assert_eq!(
            account_name("billing.svc", &taken, &roles),
            "billing_svc_account2"
        );
        assert_eq!(account_name("x", &taken, &roles), "x_account2");
        assert_eq!(account_name("9lives", &taken, &roles), "a_9lives_account");
    }

    #[test]
    fn long_role_names_still_give_valid_distinct_account_names() {
        let long = "a".repeat(60);
        let roles = BTreeSet::new();
        let mut taken = BTreeSet::new();
        for _ in 0..12 {
            let name = account_name(&long, &taken, &roles);
            assert!(crate::inventory::is_name(&name), "{name}");
            assert!(taken.insert(name));
        }
    }

    #[test]
    fn database_names_are_inventory_names() {
        assert_eq!(database_name(None, "Orders-Prod").unwrap(), "orders_prod");
        assert_eq!(database_name(Some("orders"), "x").unwrap(), "orders");
        assert!(database_name(Some("Orders"), "x").is_err());
    }

    #[test]
    fn a_group_credrotd_would_refuse_is_a_comment_not_member_of() {
        let mut c = catalog();
        let reporting = c.roles.iter_mut().find(|r| r.name == "reporting").unwrap();
        reporting.dangerous.push(Attribute {
            name: "CREATEDB".into(),
            fix: String::new(),
        });
        c.memberships.push(c.memberships[0].clone());
        let text = draft(
            &[Source {
                catalog: c,
                ..source()
            }],
            &options(),
        );
        assert!(!text.contains("member_of: [reporting]"), "{text}");
        assert!(text.contains("NOT IMPORTED: member of reporting, which has CREATEDB"));
    }

    #[test]
    fn scalars_are_quoted_when_yaml_would_read_them_otherwise() {
        assert_eq!(yaml_str("orders"), "orders");
        assert_eq!(yaml_str("no"), "\"no\"");
        assert_eq!(yaml_str("TODO: x"), "\"TODO: x\"");
        assert_eq!(yaml_str("a\"b"), "\"a\\\"b\"");
        assert_eq!(yaml_str("12"), "\"12\"");
        assert_eq!(yaml_str("audit:"), "\"audit:\"");
        assert_eq!(yaml_str("a\u{7f}b\u{85}"), "\"a\\u007Fb\\u0085\"");
        // What it writes reads back as the same string.
        for text in [
            "audit:",
            "a\"b\\c",
            "x\u{7f}\u{9f}\u{FFFE}y",
            "tab\there",
            "ünïcode",
        ] {
            let yaml = format!("k: {}\n", yaml_str(text));
            let v: std::collections::BTreeMap<String, String> =
                serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
            assert_eq!(v["k"], text, "{yaml}");
        }
    }
}
