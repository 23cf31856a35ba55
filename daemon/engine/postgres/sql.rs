//! The statements credrotd sends to PostgreSQL, and their quoting.
//!
//! Every identifier and literal is quoted with `postgres-protocol`'s
//! implementation of the server's own rules ([`q`], [`lit`]); what else goes into
//! a statement comes from the server's catalog (`pg_get_function_identity_arguments`)
//! or from a validated inventory. Here too: the comments that mark credrotd's
//! roles (and their parser), `VALID UNTIL` literals, timestamp columns that never
//! hand sqlx a value it cannot decode, and the objects privileges are on. The
//! engine's reads and its [`Engine`](super::Engine) implementation are in
//! `mod.rs`.

use chrono::{DateTime, Datelike, Utc};
pub(super) use postgres_protocol::escape::{escape_identifier as q, escape_literal as lit};
use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::engine::{valid_ledger_id, Owner};
use crate::inventory::{Account, Grant, Objects};

/// The comment that marks a scoped role as credrotd's, without an owner (what
/// reconciliation writes on a new role, and what older versions wrote).
pub(super) fn scoped_comment(account: &str) -> String {
    format!("credrotd:scoped account={account}")
}

/// The comment of a scoped role owned by ledger `ledger`, last claimed at `seen`.
pub(super) fn owned_scoped_comment(account: &str, ledger: &str, seen: DateTime<Utc>) -> String {
    format!(
        "credrotd:scoped account={account} owner={ledger} seen={}",
        seen.timestamp()
    )
}

/// A scoped role's marker, parsed from its comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ScopedMarker {
    pub(super) account: String,
    pub(super) owner: Owner,
}

/// Parses `credrotd:scoped account=<name>[ owner=<ledger-id>[ seen=<unix-seconds>]]`.
/// Anything else (another text, extra or misplaced fields, an invalid ledger id)
/// is not a marker: the role is then not credrotd's, which is the safe reading.
pub(super) fn parse_scoped(comment: &str) -> Option<ScopedMarker> {
    let mut parts = comment.strip_prefix("credrotd:scoped ")?.split(' ');
    let account = parts.next()?.strip_prefix("account=")?;
    // Account names are `[a-z][a-z0-9_]{0,39}`; be no more lenient here.
    if account.is_empty()
        || !account
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    let mut owner = Owner::default();
    let mut next = parts.next();
    if let Some(ledger) = next.and_then(|p| p.strip_prefix("owner=")) {
        if !valid_ledger_id(ledger) {
            return None;
        }
        owner.ledger = Some(ledger.to_owned());
        next = parts.next();
        if let Some(seen) = next.and_then(|p| p.strip_prefix("seen=")) {
            if seen.is_empty() || seen.len() > 15 || !seen.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            owner.seen = Some(DateTime::from_timestamp(seen.parse().ok()?, 0)?);
            next = parts.next();
        }
    }
    if next.is_some() {
        return None;
    }
    Some(ScopedMarker {
        account: account.to_owned(),
        owner,
    })
}

/// Whether a role's comment marks it as the scoped role of `account`, whatever
/// ledger owns it.
pub(super) fn is_scoped_of(comment: Option<&str>, account: &str) -> bool {
    comment
        .and_then(parse_scoped)
        .is_some_and(|m| m.account == account)
}

/// The comment that marks a per-rotation (ephemeral) login role.
pub(super) fn login_comment(account: &str) -> String {
    format!("credrotd:login account={account}")
}

/// The comment that marks an alternating login role.
pub(super) fn fixed_comment(account: &str) -> String {
    format!("credrotd:alternating account={account}")
}

/// The prefix of the comment that marks a privilege role.
const PRIVILEGES_PREFIX: &str = "credrotd:privileges set=";

/// The comment that marks a privilege role: the role that holds one distinct set
/// of declared grants in one database, whose members are the scoped roles of
/// every account that declares that set. The database is named for the
/// operator (and the test harness's clean-up); it is last, as it may hold spaces.
pub(super) fn privileges_comment(role: &str, database: &str) -> String {
    format!("{PRIVILEGES_PREFIX}{role} database={database}")
}

/// Whether `comment` marks a privilege role.
pub(super) fn is_privilege_role(comment: Option<&str>) -> bool {
    comment.is_some_and(|c| c.starts_with(PRIVILEGES_PREFIX))
}

/// The privilege role of an account's grants in database `database`, or `None`
/// when it declares none: `credrotd_p_` and 16 hex digits of a hash of the
/// database and the grants, in an order-free canonical form (row filters are
/// left out: their policies are per account, on the scoped role). Accounts that
/// declare the same grants share it, so an object's ACL holds one entry per
/// distinct set rather than one per account: a table's ACL lives in its
/// `pg_class` row, which has no TOAST table, and thousands of entries no
/// longer fit ("row is too big"). The database is in the hash because roles are
/// cluster-wide and a privilege role must never carry one database's grants to
/// another's accounts.
pub(super) fn privilege_role(database: &str, grants: &[Grant]) -> Option<String> {
    use sha2::{Digest, Sha256};
    if grants.is_empty() {
        return None;
    }
    let lines: std::collections::BTreeSet<String> = grants
        .iter()
        .map(|g| {
            let objects = match &g.objects {
                None => "schema".to_owned(),
                Some(Objects::All) => "*".to_owned(),
                Some(Objects::Named(names)) => {
                    let names: std::collections::BTreeSet<&String> = names.iter().collect();
                    format!("{names:?}")
                }
            };
            format!(
                "{:?} {} {objects} {:?}",
                g.schema,
                g.kind.as_str(),
                g.privileges
            )
        })
        .collect();
    let mut h = Sha256::new();
    h.update(format!("credrotd privileges v1\n{database:?}\n").as_bytes());
    for l in &lines {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    let digest = h.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("credrotd_p_{hex}"))
}

/// Whether a plan statement changes only roles (creation, attributes,
/// comments, memberships), never an object's ACL: such statements may run
/// concurrently with other accounts' reconciliations, while concurrent
/// `GRANT`s on one object fail with "tuple concurrently updated". Every name
/// in a statement is quoted ([`q`]), so a membership statement starts with
/// `GRANT "` / `REVOKE "`, and an object privilege statement never does;
/// an entry of several statements never counts as roles only.
pub(super) fn changes_roles_only(sql: &str) -> bool {
    !sql.contains("; ")
        && [
            "CREATE ROLE ",
            "COMMENT ON ROLE ",
            "ALTER ROLE ",
            "GRANT \"",
            "REVOKE \"",
        ]
        .iter()
        .any(|p| sql.starts_with(p))
}

pub(super) const SAFE_ATTRIBUTES: &str =
    "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS";

/// Columns that read the timestamp expression `expr` without ever handing sqlx a
/// value it cannot decode (`infinity`, `-infinity`, years beyond chrono's range
/// panic in its decoder): whole seconds and microseconds since the epoch when
/// finite, and whether it is `-infinity`. Decode with [`decode_ts`].
pub(super) fn ts_columns(expr: &str, alias: &str) -> String {
    format!(
        "CASE WHEN isfinite({expr}) THEN floor(extract(epoch FROM {expr}))::int8 END AS {alias}_secs, \
         CASE WHEN isfinite({expr}) THEN ((extract(epoch FROM {expr}) - floor(extract(epoch FROM {expr}))) * 1000000)::int8 END AS {alias}_micros, \
         coalesce({expr} = '-infinity'::timestamptz, false) AS {alias}_neg"
    )
}

/// Decodes [`ts_columns`]: `None` for NULL, `infinity` and dates beyond chrono's
/// range (all "never"), `MIN_UTC` for `-infinity`.
pub(super) fn decode_ts(row: &PgRow, alias: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    if row.try_get::<bool, _>(format!("{alias}_neg").as_str())? {
        return Ok(Some(DateTime::<Utc>::MIN_UTC));
    }
    let secs: Option<i64> = row.try_get(format!("{alias}_secs").as_str())?;
    let micros: Option<i64> = row.try_get(format!("{alias}_micros").as_str())?;
    let nanos = (micros.unwrap_or(0).clamp(0, 999_999) * 1000) as u32;
    Ok(secs.and_then(|s| DateTime::from_timestamp(s, nanos)))
}

/// Setting names are validated as `ident(.ident)*`; quote each part.
pub(super) fn setting_name(k: &str) -> String {
    k.split('.').map(q).collect::<Vec<_>>().join(".")
}

/// A `VALID UNTIL` literal. `MIN_UTC` (how `-infinity` is read) and anything before
/// year 1 is `'-infinity'`; anything after year 9999 is `'infinity'` (both outside
/// what RFC 3339 renders and the server parses back); the rest is exact to the
/// second.
pub(super) fn valid_until(t: DateTime<Utc>) -> String {
    if t == DateTime::<Utc>::MIN_UTC || t.year() < 1 {
        lit("-infinity")
    } else if t.year() > 9999 {
        lit("infinity")
    } else {
        lit(&t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }
}

/// A database object a privilege is on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Obj {
    Schema(String),
    Table(String, String),
    Sequence(String, String),
    /// Schema, name, identity arguments (from the server).
    Function(String, String, String),
}

impl Obj {
    /// For people: `table public.orders`.
    pub(super) fn describe(&self) -> String {
        match self {
            Obj::Schema(s) => format!("schema {s}"),
            Obj::Table(s, t) => format!("table {s}.{t}"),
            Obj::Sequence(s, t) => format!("sequence {s}.{t}"),
            Obj::Function(s, f, args) => format!("routine {s}.{f}({args})"),
        }
    }

    pub(super) fn sql(&self) -> String {
        match self {
            Obj::Schema(s) => format!("SCHEMA {}", q(s)),
            Obj::Table(s, t) => format!("TABLE {}.{}", q(s), q(t)),
            Obj::Sequence(s, t) => format!("SEQUENCE {}.{}", q(s), q(t)),
            // The argument list comes from pg_get_function_identity_arguments, the
            // server's own rendering of the catalog, not from the inventory.
            // ROUTINE covers functions and procedures alike.
            Obj::Function(s, f, args) => format!("ROUTINE {}.{}({args})", q(s), q(f)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct DefaultAcl {
    pub(super) for_role: String,
    /// Empty for a database-wide default.
    pub(super) schema: String,
    pub(super) objtype: char,
    pub(super) privilege: String,
}

impl DefaultAcl {
    pub(super) fn kind_sql(&self) -> &'static str {
        match self.objtype {
            'S' => "SEQUENCES",
            'f' => "FUNCTIONS",
            'T' => "TYPES",
            'n' => "SCHEMAS",
            _ => "TABLES",
        }
    }
}

/// Statements that give a login role the account's session defaults: run as
/// the scoped role (so objects it creates belong to the account, not to the
/// login), the account's settings, and the connection limit.
pub(super) fn login_defaults(account: &Account, username: &str) -> Vec<String> {
    let mut out = vec![format!(
        "ALTER ROLE {} SET role = {}",
        q(username),
        lit(account.scoped_role())
    )];
    for (k, v) in &account.settings {
        out.push(format!(
            "ALTER ROLE {} SET {} = {}",
            q(username),
            setting_name(k),
            lit(v)
        ));
    }
    out.push(format!(
        "ALTER ROLE {} CONNECTION LIMIT {}",
        q(username),
        account.connection_limit.unwrap_or(-1)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::ObjectKind;

    fn grant(schema: &str, objects: Option<Objects>, privileges: &[&'static str]) -> Grant {
        Grant {
            schema: schema.into(),
            kind: if objects.is_some() {
                ObjectKind::Table
            } else {
                ObjectKind::Schema
            },
            objects,
            privileges: privileges.iter().copied().collect(),
            row_filter: None,
        }
    }

    #[test]
    fn accounts_with_the_same_grants_share_a_privilege_role() {
        let named = |n: &[&str]| Some(Objects::Named(n.iter().map(|s| s.to_string()).collect()));
        let a = [
            grant("public", None, &["USAGE"]),
            grant(
                "public",
                named(&["orders", "customers"]),
                &["SELECT", "INSERT"],
            ),
        ];
        // Same grants in another order, names in another order, a row filter.
        let mut b = [
            grant(
                "public",
                named(&["customers", "orders"]),
                &["INSERT", "SELECT"],
            ),
            grant("public", None, &["USAGE"]),
        ];
        b[0].row_filter = Some("region = 'eu'".into());
        let p = privilege_role("shop", &a).unwrap();
        assert!(p.starts_with("credrotd_p_") && p.len() == 27, "{p}");
        assert_eq!(privilege_role("shop", &b).as_deref(), Some(p.as_str()));
        // Another database, another privilege, another object: another role.
        assert_ne!(privilege_role("shop2", &a).unwrap(), p);
        let c = [
            grant("public", None, &["USAGE"]),
            grant("public", named(&["orders", "customers"]), &["SELECT"]),
        ];
        assert_ne!(privilege_role("shop", &c).unwrap(), p);
        let d = [
            grant("public", None, &["USAGE"]),
            grant("public", Some(Objects::All), &["SELECT", "INSERT"]),
        ];
        assert_ne!(privilege_role("shop", &d).unwrap(), p);
        assert_eq!(privilege_role("shop", &[]), None);
    }

    #[test]
    fn only_role_statements_skip_the_database_wide_lock() {
        for sql in [
            "CREATE ROLE \"etl\" NOLOGIN",
            "COMMENT ON ROLE \"etl\" IS 'x'",
            "ALTER ROLE \"etl\" SET \"app\".\"tenant\" = '7'",
            "GRANT \"credrotd_p_00\" TO \"etl\"",
            "REVOKE \"readers\" FROM \"etl\"",
        ] {
            assert!(changes_roles_only(sql), "{sql}");
        }
        for sql in [
            "GRANT SELECT ON TABLE \"public\".\"orders\" TO \"etl\"",
            "REVOKE SELECT ON TABLE \"public\".\"orders\" FROM \"etl\"",
            "REVOKE GRANT OPTION FOR SELECT ON TABLE \"public\".\"t\" FROM \"etl\"",
            "ALTER DEFAULT PRIVILEGES FOR ROLE \"o\" IN SCHEMA \"s\" GRANT SELECT ON TABLES TO \"p\"",
            "SET ROLE \"g\"; REVOKE SELECT ON TABLE \"public\".\"t\" FROM \"etl\"; RESET ROLE",
            "GRANT \"p\" TO CURRENT_USER; DROP OWNED BY \"p\"; DROP ROLE \"p\"",
            "CREATE POLICY \"credrotd_etl\" ON \"public\".\"t\" TO \"etl\" USING (true)",
        ] {
            assert!(!changes_roles_only(sql), "{sql}");
        }
    }

    fn owner(ledger: Option<&str>, seen: Option<i64>) -> Owner {
        Owner {
            ledger: ledger.map(str::to_owned),
            seen: seen.map(|s| DateTime::from_timestamp(s, 0).unwrap()),
        }
    }

    #[test]
    fn scoped_markers_parse_with_and_without_an_owner() {
        let m = parse_scoped("credrotd:scoped account=etl").unwrap();
        assert_eq!(m.account, "etl");
        assert_eq!(
            m.owner,
            Owner::default(),
            "the old form is managed and unowned"
        );
        let m =
            parse_scoped("credrotd:scoped account=etl owner=ledger-1a seen=1700000000").unwrap();
        assert_eq!(m.owner, owner(Some("ledger-1a"), Some(1_700_000_000)));
        let m = parse_scoped("credrotd:scoped account=etl owner=abc").unwrap();
        assert_eq!(m.owner, owner(Some("abc"), None));
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let m = parse_scoped(&owned_scoped_comment("etl", "prod-1", t)).unwrap();
        assert_eq!(
            (m.account.as_str(), m.owner),
            ("etl", owner(Some("prod-1"), Some(1_800_000_000)))
        );
        assert_eq!(
            parse_scoped(&scoped_comment("etl")).unwrap().owner,
            Owner::default()
        );
    }

    #[test]
    fn odd_comments_are_not_markers_and_never_panic() {
        let long = format!("credrotd:scoped account=a owner={}", "x".repeat(65));
        for c in [
            "",
            "credrotd:scoped",
            "credrotd:scoped ",
            "credrotd:scoped account=",
            "credrotd:scoped account=etl ",
            "credrotd:scoped  account=etl",
            "credrotd:scoped account=etl owner=",
            "credrotd:scoped account=etl owner=UPPER",
            "credrotd:scoped account=etl owner=under_score",
            long.as_str(),
            "credrotd:scoped account=etl owner=a seen=",
            "credrotd:scoped account=etl owner=a seen=-1",
            "credrotd:scoped account=etl owner=a seen=12x",
            "credrotd:scoped account=etl owner=a seen=999999999999999",
            "credrotd:scoped account=etl owner=a seen=99999999999999999999999",
            "credrotd:scoped account=etl seen=1",
            "credrotd:scoped account=etl owner=a seen=1 extra=1",
            "credrotd:scoped account=etl owner=a owner=b",
            "credrotd:scoped account=etl\nowner=a",
            "credrotd:login account=etl",
            "CREDROTD:SCOPED ACCOUNT=ETL",
            "credrotd:scoped account=étl owner=ä",
            "\u{0}credrotd:scoped account=etl",
        ] {
            let parsed = parse_scoped(c);
            assert!(parsed.is_none(), "{c:?} parsed as {parsed:?}");
        }
        // Other accounts' markers and missing comments are not this account's.
        assert!(!is_scoped_of(Some("credrotd:scoped account=etl2"), "etl"));
        assert!(!is_scoped_of(None, "etl"));
        assert!(is_scoped_of(
            Some("credrotd:scoped account=etl owner=x seen=1"),
            "etl"
        ));
    }

    #[test]
    fn valid_until_literals_cover_both_infinities() {
        assert_eq!(valid_until(DateTime::<Utc>::MIN_UTC), "'-infinity'");
        assert_eq!(valid_until(DateTime::<Utc>::MAX_UTC), "'infinity'");
        let t = DateTime::from_timestamp(1_700_000_000, 500_000_000).unwrap();
        assert_eq!(valid_until(t), "'2023-11-14T22:13:20Z'");
        let ancient = DateTime::parse_from_rfc3339("0000-06-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(valid_until(ancient), "'-infinity'");
    }
}
