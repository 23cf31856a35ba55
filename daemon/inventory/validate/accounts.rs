//! The `accounts:` section: strategy, grants, memberships, settings, stores,
//! revocation and notification of each account.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;
use chrono_tz::Tz;
use serde_saphyr::{Location, Spanned};

use super::super::raw::{self, ObjectList, RawAccount, RawGrant, S};
use super::super::{
    Account, Database, EngineKind, Grant, Notify, ObjectKind, Objects, RevokePolicy, StoreConfig,
    StoreKind, Strategy, AWS_MIN_WRITE_INTERVAL, DDL_PRIVILEGES,
};
use super::policy::{min_interval, Lifetimes};
use super::{identifier_problem, is_account_name, list, Defaults, Validator, ACCOUNT_NAME_RULE};
use crate::engine::postgres::rules::{is_setting_name, DANGEROUS_MEMBERSHIPS, FORBIDDEN_SETTINGS};

impl Validator {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn account(
        &mut self,
        name: &S<String>,
        acc: RawAccount,
        defaults: &Defaults,
        databases: &BTreeMap<String, Database>,
        stores: &BTreeMap<String, StoreConfig>,
        tz: Tz,
    ) -> Option<Account> {
        let at = name.referenced;
        let n = name.value.clone();
        let errors_before = self.error_count();
        if !is_account_name(&n) {
            self.error(&at, format!("account name {n:?} must match {ACCOUNT_NAME_RULE} (it is also the database role's name)"));
        }
        if self.unsupported.contains(&acc.database.value) {
            // Already reported where the database is defined.
        } else if !databases.contains_key(&acc.database.value) {
            self.error(
                &acc.database.referenced,
                format!(
                    "account {n:?}: unknown database {:?}; defined databases: {}",
                    acc.database.value,
                    list(databases.keys())
                ),
            );
        }
        let engine = databases
            .get(&acc.database.value)
            .map(|d| d.engine)
            .unwrap_or(EngineKind::Postgres);
        for (field, val) in [("purpose", &acc.purpose), ("owner", &acc.owner)] {
            match val {
                Some(v) if v.value.trim().is_empty() => self.error(
                    &v.referenced,
                    format!("account {n:?}: `{field}` must not be empty"),
                ),
                Some(_) => {}
                None => self.policy(&at, format!("account {n:?}: `{field}` is required")),
            }
        }

        // Strategy and its own fields.
        let strategy_text = acc.strategy.as_ref().or(defaults.strategy.as_ref());
        let strategy = match strategy_text.map(|s| (s.value.as_str(), s.referenced)) {
            None | Some(("ephemeral", _)) => Some(Strategy::Ephemeral),
            Some(("alternating", _)) => Some(Strategy::Alternating),
            Some(("static", sat)) => match &acc.role {
                Some(role) => {
                    if role.value == n {
                        self.error(&role.referenced, format!("account {n:?}: the static role must differ from the account name, which is the account's scoped role"));
                    } else if let Some(p) = identifier_problem(&role.value) {
                        self.error(
                            &role.referenced,
                            format!("account {n:?}: role {:?} {p}", role.value),
                        );
                    }
                    Some(Strategy::Static {
                        role: role.value.clone(),
                        adopt: acc.adopt.as_ref().is_some_and(|a| a.value),
                    })
                }
                None => {
                    self.error(
                        &sat,
                        format!("account {n:?}: strategy static needs `role: <existing role>`"),
                    );
                    None
                }
            },
            Some((other, sat)) => {
                self.error(&sat, format!("account {n:?}: unknown strategy {other:?}; expected ephemeral, alternating or static"));
                None
            }
        };
        if !matches!(strategy, Some(Strategy::Static { .. }) | None) {
            if let Some(role) = &acc.role {
                self.error(
                    &role.referenced,
                    format!("account {n:?}: `role` only applies to strategy static"),
                );
            }
            if let Some(adopt) = &acc.adopt {
                self.error(
                    &adopt.referenced,
                    format!("account {n:?}: `adopt` only applies to strategy static"),
                );
            }
        }

        // Schedule, overlap, lifetime (policy.rs).
        let Lifetimes {
            schedule,
            overlap,
            expiry_margin,
            lifetime,
            max_lifetime,
        } = self.lifetimes(&n, at, &acc, defaults, &strategy, engine, tz);

        // Grants.
        let allow_ddl = acc.allow_ddl.as_ref().is_some_and(|a| a.value);
        let mut grants = Vec::new();
        for g in acc.grants {
            if let Some(g) = self.grant(&n, g, allow_ddl, engine) {
                grants.push(g);
            }
        }
        let mut member_of = Vec::new();
        for m in acc.member_of {
            if let Some(p) = identifier_problem(&m.value) {
                self.error(
                    &m.referenced,
                    format!("account {n:?}: member_of role {:?} {p}", m.value),
                );
            } else if m.value == n || m.value.eq_ignore_ascii_case("public") {
                self.error(
                    &m.referenced,
                    format!("account {n:?}: cannot be a member of {:?}", m.value),
                );
            } else if DANGEROUS_MEMBERSHIPS.contains(&m.value.as_str()) {
                self.policy(
                    &m.referenced,
                    format!(
                        "account {n:?}: membership in {} grants far more than least privilege",
                        m.value
                    ),
                );
                member_of.push(m.value);
            } else if member_of.contains(&m.value) {
                self.warn(
                    &m.referenced,
                    format!("account {n:?}: member_of lists {:?} twice", m.value),
                );
            } else {
                member_of.push(m.value);
            }
        }
        let mut settings = BTreeMap::new();
        if engine.is_mysql() {
            if let Some((k, _)) = acc.settings.0.first() {
                self.error(&k.referenced, format!("account {n:?}: `settings` apply to PostgreSQL only (MySQL and MariaDB have no per-role session variables)"));
            }
        }
        for (k, v) in acc.settings.0 {
            if !is_setting_name(&k.value) {
                self.error(&k.referenced, format!("account {n:?}: setting name {:?} is not a valid parameter name (e.g. app.tenant_id)", k.value));
            } else if FORBIDDEN_SETTINGS.contains(&k.value.as_str()) {
                self.error(
                    &k.referenced,
                    format!(
                        "account {n:?}: setting {:?} cannot be set per account (credrotd manages `role`; list-valued and superuser-only settings are refused)",
                        k.value
                    ),
                );
            } else if v.value.contains('\0') {
                self.error(
                    &v.referenced,
                    format!("account {n:?}: setting {:?} contains a NUL byte", k.value),
                );
            } else {
                settings.insert(k.value, v.value);
            }
        }
        let connection_limit = match acc.connection_limit {
            Some(c) if c.value < -1 || c.value == 0 => {
                self.error(&c.referenced, format!("account {n:?}: connection_limit must be positive (or -1 for no limit), found {}", c.value));
                None
            }
            Some(c) if c.value == -1 => None,
            Some(c) => Some(c.value),
            None => None,
        };

        // Stores.
        let store_names = match (&acc.store, &defaults.store) {
            (Some(s), _) => Spanned::new(
                match &s.value {
                    raw::OneOrMany::One(x) => vec![x.clone()],
                    raw::OneOrMany::Many(v) => v.clone(),
                },
                s.referenced,
                s.defined,
            ),
            (None, Some(d)) => d.clone(),
            (None, None) => {
                self.error(
                    &at,
                    format!("account {n:?}: no store (set `store` here or in `defaults`)"),
                );
                Spanned::new(Vec::new(), at, at)
            }
        };
        let mut store_list = Vec::new();
        for s in &store_names.value {
            if self.unsupported.contains(s) {
                // Already reported where the store is defined.
            } else if !stores.contains_key(s) {
                self.error(
                    &store_names.referenced,
                    format!(
                        "account {n:?}: unknown store {s:?}; defined stores: {}",
                        list(stores.keys())
                    ),
                );
            } else if !store_list.contains(s) {
                store_list.push(s.clone());
            }
        }
        if store_names.value.is_empty() && acc.store.is_some() {
            self.error(
                &store_names.referenced,
                format!("account {n:?}: `store` lists no store"),
            );
        }
        let path = match &acc.path {
            Some(p) if p.value.trim().is_empty() || p.value.contains("..") => {
                self.error(
                    &p.referenced,
                    format!(
                        "account {n:?}: path {:?} must be non-empty and must not contain \"..\"",
                        p.value
                    ),
                );
                String::new()
            }
            Some(p) => p.value.trim_matches('/').to_owned(),
            None => format!("database/{}/{}", acc.database.value, n),
        };
        for s in &store_list {
            let Some(st) = stores.get(s) else { continue };
            let path_at = acc.path.as_ref().map(|p| p.referenced).unwrap_or(at);
            match &st.kind {
                StoreKind::Vault(_)
                    if !path.is_empty()
                        && !path
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_./@".contains(c)) =>
                {
                    self.error(&path_at, format!("account {n:?}: path {path:?} is not a Vault path for store {s:?} (letters, digits, - _ . / @)"));
                }
                StoreKind::Aws(_) => {
                    if !path.is_empty()
                        && (path.len() > 512
                            || !path
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c)))
                    {
                        self.error(&path_at, format!("account {n:?}: path {path:?} is not an AWS secret name for store {s:?} (at most 512 of letters, digits, / _ + = . @ -)"));
                    }
                    if let Some(min) = schedule
                        .as_ref()
                        .and_then(|sch| min_interval(sch, Utc::now(), 64))
                    {
                        if min < AWS_MIN_WRITE_INTERVAL {
                            let sched_at = acc
                                .schedule
                                .as_ref()
                                .or(defaults.schedule.as_ref())
                                .map(|x| x.referenced)
                                .unwrap_or(at);
                            self.warn(&sched_at, format!("account {n:?}: the schedule writes secret {path:?} of store {s:?} every {}; AWS advises at most about once per 10 minutes (throttling, version quota)", humantime::format_duration(min)));
                        }
                    }
                }
                _ => {}
            }
        }
        let revoke = match acc.revoke {
            Some(r) => RevokePolicy {
                terminate_sessions: r.terminate_sessions.is_none_or(|t| t.value),
                grace: match &r.grace {
                    Some(g) => self.duration(g, "revoke.grace").unwrap_or_default(),
                    None => Duration::ZERO,
                },
            },
            None => RevokePolicy {
                terminate_sessions: true,
                grace: Duration::ZERO,
            },
        };
        let notify = match acc.notify {
            None => Notify::default(),
            Some(raw) => self.notify(&n, raw),
        };
        if engine.is_mysql() {
            let max = engine.max_name_len();
            let server = if engine == EngineKind::Mysql {
                "MySQL"
            } else {
                "MariaDB"
            };
            let hint = if engine == EngineKind::Mysql {
                " (MariaDB takes 80: write `engine: mariadb` if the server is MariaDB)"
            } else {
                ""
            };
            // The longest name the strategy creates or manages, what it is and
            // where it comes from; the scoped role is the account name itself.
            let shorter = "; use a shorter account name";
            let names: Vec<(String, &str, Location, &str)> = match &strategy {
                Some(Strategy::Ephemeral) => {
                    vec![(format!("{n}_YYYYMMDDHHMMSS"), "login name", at, shorter)]
                }
                Some(Strategy::Alternating) => vec![(format!("{n}_a"), "login name", at, shorter)],
                Some(Strategy::Static { role, .. }) => vec![
                    (n.clone(), "scoped role", at, shorter),
                    (
                        role.clone(),
                        "static user",
                        acc.role.as_ref().map(|r| r.referenced).unwrap_or(at),
                        "",
                    ),
                ],
                None => Vec::new(),
            };
            for (name, what, name_at, fix) in names {
                let len = name.chars().count();
                if len > max {
                    self.error(&name_at, format!("account {n:?}: {what} {name:?} would be {len} characters, longer than the {max} {server} allows{hint}{fix}"));
                }
            }
        }
        if self.error_count() > errors_before {
            return None;
        }
        Some(Account {
            notify,
            name: n,
            database: acc.database.value,
            purpose: acc.purpose.map(|p| p.value),
            owner: acc.owner.map(|o| o.value),
            strategy: strategy?,
            schedule: schedule?,
            overlap,
            expiry_margin: expiry_margin?,
            lifetime: lifetime?,
            max_lifetime: max_lifetime?,
            grants,
            member_of,
            settings,
            connection_limit,
            stores: store_list,
            path,
            allow_ddl,
            revoke,
        })
    }

    fn notify(&mut self, account: &str, raw: raw::RawNotify) -> Notify {
        let mut out = Notify {
            timeout: Duration::from_secs(30),
            ..Notify::default()
        };
        if let Some(exec) = raw.exec {
            if exec.value.is_empty() || exec.value[0].trim().is_empty() {
                self.error(
                    &exec.referenced,
                    format!("account {account:?}: notify.exec needs a command"),
                );
            } else {
                out.exec = Some(exec.value);
            }
        }
        if let Some(sig) = raw.signal {
            let name = sig
                .signal
                .as_ref()
                .map(|s| s.value.to_ascii_uppercase())
                .unwrap_or_else(|| "HUP".into());
            let full = if name.starts_with("SIG") {
                name.clone()
            } else {
                format!("SIG{name}")
            };
            match full.parse::<nix::sys::signal::Signal>() {
                Ok(signal) => out.signal = Some((self.path(&sig.pid_file.value), signal)),
                Err(_) => {
                    let at = sig
                        .signal
                        .as_ref()
                        .map(|s| s.referenced)
                        .unwrap_or(sig.pid_file.referenced);
                    self.error(&at, format!("account {account:?}: unknown signal {name:?}; expected e.g. HUP, USR1, USR2, TERM"));
                }
            }
        }
        if let Some(t) = raw
            .timeout
            .as_ref()
            .and_then(|t| self.duration(t, "notify.timeout"))
        {
            out.timeout = t;
        }
        out
    }

    fn grant(
        &mut self,
        account: &str,
        g: RawGrant,
        allow_ddl: bool,
        engine: EngineKind,
    ) -> Option<Grant> {
        if let Some(p) = identifier_problem(&g.schema.value) {
            self.error(
                &g.schema.referenced,
                format!("account {account:?}: schema {:?} {p}", g.schema.value),
            );
            return None;
        }
        let mysql = engine.is_mysql();
        if let (true, Some(seq)) = (mysql, &g.sequences) {
            self.error(&seq.referenced, format!("account {account:?}: MySQL and MariaDB have no sequence privileges (a MariaDB sequence is a table: list it under `tables`)"));
            return None;
        }
        if let (false, Some(pr)) = (mysql, &g.procedures) {
            self.error(&pr.referenced, format!("account {account:?}: `procedures` applies to MySQL and MariaDB; on PostgreSQL list procedures under `functions`"));
            return None;
        }
        let targets: Vec<(ObjectKind, &S<ObjectList>)> = [
            (ObjectKind::Table, g.tables.as_ref()),
            (ObjectKind::Sequence, g.sequences.as_ref()),
            (ObjectKind::Function, g.functions.as_ref()),
            (ObjectKind::Procedure, g.procedures.as_ref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        let (kind, objects) = match targets.as_slice() {
            [] => (ObjectKind::Schema, None),
            [(kind, list)] => {
                let objects = match &list.value {
                    ObjectList::Star(s) if s == "*" => Objects::All,
                    ObjectList::Star(s) => {
                        self.error(&list.referenced, format!("account {account:?}: {}: expected \"*\" or a list of names, found {s:?}", kind.as_str()));
                        return None;
                    }
                    ObjectList::Names(names) if names.is_empty() => {
                        self.error(
                            &list.referenced,
                            format!("account {account:?}: {}: the list is empty", kind.as_str()),
                        );
                        return None;
                    }
                    ObjectList::Names(names) => {
                        for name in names {
                            if let Some(p) = identifier_problem(name) {
                                self.error(
                                    &list.referenced,
                                    format!(
                                        "account {account:?}: {} name {name:?} {p}",
                                        kind.as_str()
                                    ),
                                );
                                return None;
                            }
                        }
                        Objects::Named(names.clone())
                    }
                };
                (*kind, Some(objects))
            }
            [_, (_, second), ..] => {
                self.error(&second.referenced, format!("account {account:?}: a grant covers one of tables, sequences, functions or procedures; split it into several grants"));
                return None;
            }
        };
        let allowed = kind.privileges_for(engine);
        let mut privileges = BTreeSet::new();
        if g.privileges.value.is_empty() {
            self.error(
                &g.privileges.referenced,
                format!(
                    "account {account:?}: grant on schema {:?} lists no privileges",
                    g.schema.value
                ),
            );
            return None;
        }
        for p in &g.privileges.value {
            // Multi-word privileges (`CREATE VIEW`) match with white space collapsed.
            let upper = p
                .value
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_ascii_uppercase();
            if upper == "ALL" || upper == "ALL PRIVILEGES" {
                self.policy(&p.referenced, format!("account {account:?}: ALL PRIVILEGES is not least privilege; list the privileges needed"));
                privileges.extend(allowed.iter().copied());
            } else if let Some(found) = allowed.iter().find(|a| **a == upper) {
                privileges.insert(*found);
            } else {
                let what = match kind {
                    ObjectKind::Schema => "a schema".to_owned(),
                    k => k.as_str().to_owned(),
                };
                self.error(
                    &p.referenced,
                    format!("account {account:?}: privilege {:?} does not apply to {what}; expected one of {}", p.value, allowed.join(", ")),
                );
                return None;
            }
        }
        let ddl: Vec<&str> = privileges
            .iter()
            .copied()
            .filter(|p| DDL_PRIVILEGES.contains(p) && kind != ObjectKind::Sequence)
            .collect();
        if !ddl.is_empty() && !allow_ddl {
            self.policy(
                &g.privileges.referenced,
                format!("account {account:?}: DDL privileges ({}) need `allow_ddl: true` on the account", ddl.join(", ")),
            );
        }
        let row_filter = match g.row_filter {
            None => None,
            Some(f) => Some(self.row_filter(account, f, engine, kind, &objects, &privileges)?),
        };
        Some(Grant {
            schema: g.schema.value,
            kind,
            objects,
            privileges,
            row_filter,
        })
    }

    /// A `row_filter` applies to named PostgreSQL tables and the commands that
    /// row-level security governs; the expression goes into `USING (…)`, so it
    /// may not close that parenthesis or start another statement.
    fn row_filter(
        &mut self,
        account: &str,
        f: S<String>,
        engine: EngineKind,
        kind: ObjectKind,
        objects: &Option<Objects>,
        privileges: &BTreeSet<&'static str>,
    ) -> Option<String> {
        let at = &f.referenced;
        if engine.is_mysql() {
            self.error(at, format!("account {account:?}: row_filter is row-level security, which MySQL and MariaDB do not have"));
            return None;
        }
        if kind != ObjectKind::Table || !matches!(objects, Some(Objects::Named(_))) {
            self.error(at, format!("account {account:?}: row_filter applies to a grant on named tables (`tables: [t]`), not to {}", match (kind, objects) {
                (ObjectKind::Table, _) => "\"*\" (list the tables)",
                (ObjectKind::Schema, _) => "a schema",
                (k, _) => k.as_str(),
            }));
            return None;
        }
        if privileges.contains("TRUNCATE") {
            self.error(at, format!("account {account:?}: TRUNCATE ignores row-level security; a row_filter grant cannot carry it"));
            return None;
        }
        if !privileges
            .iter()
            .any(|p| ["SELECT", "INSERT", "UPDATE", "DELETE"].contains(p))
        {
            self.error(at, format!("account {account:?}: row_filter needs SELECT, INSERT, UPDATE or DELETE among the privileges"));
            return None;
        }
        match row_filter_problem(&f.value) {
            Some(p) => {
                self.error(at, format!("account {account:?}: row_filter {p}"));
                None
            }
            None => Some(f.value.trim().to_owned()),
        }
    }
}

/// Why a row filter cannot be put in `USING (…)` as it is: empty, a `;`, a
/// comment, a `$` (dollar quoting), or parentheses that close `USING` early or
/// stay open (outside string literals and quoted identifiers).
pub(crate) fn row_filter_problem(expr: &str) -> Option<&'static str> {
    if expr.trim().is_empty() {
        return Some("is empty");
    }
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut prev = '\0';
    for c in expr.chars() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => quote = Some(c),
                ';' => return Some("may not contain `;` (one expression, not statements)"),
                '$' => return Some("may not contain `$`"),
                '\0' => return Some("may not contain a NUL character"),
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth < 0 {
                        return Some("closes a parenthesis it did not open");
                    }
                }
                '-' if prev == '-' => return Some("may not contain a comment (`--`)"),
                '*' if prev == '/' => return Some("may not contain a comment (`/*`)"),
                _ => {}
            },
        }
        prev = c;
    }
    if quote.is_some() {
        Some("has an unterminated quote")
    } else if depth != 0 {
        Some("leaves a parenthesis open")
    } else {
        None
    }
}
