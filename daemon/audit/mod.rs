//! `credrotd audit` and `who-can`: what every role of a database may do,
//! against what the inventory declares and the ledger knows. The engines read
//! the catalog ([`Catalog`]) and plan reconciliation; this module only
//! compares, so the same rules hold on every engine. Nothing here changes a
//! database: a finding carries the statement that would fix it, for a person
//! to run.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::catalog::{Catalog, ManagedKind, Object, Privilege};
use crate::engine::Reconciled;

#[cfg(test)]
mod tests;
pub mod watch;

/// How much a finding matters; the exit code of `audit` is 1 from `warning` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// What kind of problem a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A role or login credrotd manages that the inventory or the ledger no
    /// longer lists.
    Orphan,
    /// A scoped role (or a managed login) holds other privileges than declared.
    Drift,
    /// A login past its expiry that still exists.
    Expired,
    /// Powers that bypass grants: superuser, reading every table, server files.
    Dangerous,
    /// Roles with the same privileges, or one's contained in another's.
    Bloat,
    /// A login nobody used for `stale_after`.
    Stale,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Orphan,
        Kind::Drift,
        Kind::Expired,
        Kind::Dangerous,
        Kind::Bloat,
        Kind::Stale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Orphan => "orphan",
            Kind::Drift => "drift",
            Kind::Expired => "expired",
            Kind::Dangerous => "dangerous",
            Kind::Bloat => "bloat",
            Kind::Stale => "stale",
        }
    }
}

/// One thing an operator should look at. Never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: Kind,
    pub severity: Severity,
    /// The inventory's name of the database.
    pub database: String,
    pub role: String,
    pub detail: String,
    /// The statement that would fix it; `audit` never runs it.
    pub fix: Option<String>,
}

/// Something worth knowing that is not a problem: the admin role's powers, the
/// server's own administrator, a check that had no data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    pub database: String,
    pub role: Option<String>,
    pub detail: String,
}

/// What `audit` prints as JSON: `{"findings": [...], "notes": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub notes: Vec<Note>,
    /// Databases that could not be audited, with why (exit code 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl Report {
    /// 0: nothing at warning or above; 1: findings; 2: a database could not be
    /// audited.
    pub fn exit_code(&self) -> u8 {
        if !self.errors.is_empty() {
            2
        } else if self
            .findings
            .iter()
            .any(|f| f.severity >= Severity::Warning)
        {
            1
        } else {
            0
        }
    }

    /// Findings counted by kind and severity (every pair, zeros included), for
    /// metrics.
    pub fn counts(&self) -> BTreeMap<(Kind, Severity), u64> {
        let mut out = BTreeMap::new();
        for k in Kind::ALL {
            for s in [Severity::Info, Severity::Warning, Severity::Error] {
                out.insert((k, s), 0);
            }
        }
        for f in &self.findings {
            *out.entry((f.kind, f.severity)).or_default() += 1;
        }
        out
    }

    /// The report as a table for a terminal.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        if self.findings.is_empty() {
            out.push_str("no findings\n");
        } else {
            let w = |f: fn(&Finding) -> usize| self.findings.iter().map(f).max().unwrap_or(0);
            let (wk, wd, wr) = (
                w(|f| f.kind.as_str().len()),
                w(|f| f.database.len()),
                w(|f| f.role.len()),
            );
            let _ = writeln!(
                out,
                "{:<8} {:<wk$} {:<wd$} {:<wr$} DETAIL",
                "SEVERITY",
                "KIND",
                "DATABASE",
                "ROLE",
                wk = wk.max(4),
                wd = wd.max(8),
                wr = wr.max(4)
            );
            for f in &self.findings {
                let _ = writeln!(
                    out,
                    "{:<8} {:<wk$} {:<wd$} {:<wr$} {}",
                    f.severity.as_str(),
                    f.kind.as_str(),
                    f.database,
                    f.role,
                    f.detail,
                    wk = wk.max(4),
                    wd = wd.max(8),
                    wr = wr.max(4)
                );
                if let Some(fix) = &f.fix {
                    let _ = writeln!(out, "{:9}fix: {fix}", "");
                }
            }
        }
        for n in &self.notes {
            match &n.role {
                Some(r) => {
                    let _ = writeln!(out, "note: {} {r}: {}", n.database, n.detail);
                }
                None => {
                    let _ = writeln!(out, "note: {}: {}", n.database, n.detail);
                }
            }
        }
        for e in &self.errors {
            let _ = writeln!(out, "error: {e}");
        }
        out
    }

    /// Sorted: most severe first, then by database, kind and role; a role's
    /// findings keep their order (a plan's statements depend on each other).
    pub fn sort(&mut self) {
        self.findings.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then_with(|| a.database.cmp(&b.database))
                .then_with(|| a.kind.cmp(&b.kind))
                .then_with(|| a.role.cmp(&b.role))
        });
    }
}

/// When each login was last seen connected, from the daemon's samples.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    /// The first sample: nothing is known about earlier use.
    pub since: DateTime<Utc>,
    /// Role name to the last time a session of it was seen.
    pub last_seen: BTreeMap<String, DateTime<Utc>>,
}

/// What the inventory and the ledger say about one database.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    /// The inventory's name of the database.
    pub database: String,
    /// This process's ledger id: scoped roles another ledger owns are another
    /// inventory's.
    pub ledger_id: Option<String>,
    /// Each declared account on this database, with the usernames the ledger
    /// knows as live or in the middle of a rotation, and its static role.
    pub accounts: BTreeMap<String, DeclaredAccount>,
    /// Whether a ledger was read: without one, logins of declared accounts
    /// cannot be told from orphans.
    pub ledger_read: bool,
    /// What reconciliation would change, per account (or why it cannot tell).
    pub plans: BTreeMap<String, Result<Reconciled, String>>,
    /// Login activity; `None`: no sample yet.
    pub activity: Option<Activity>,
    /// A login unused this long is stale.
    pub stale_after: chrono::Duration,
}

#[derive(Debug, Clone, Default)]
pub struct DeclaredAccount {
    pub live: BTreeSet<String>,
    /// A static account's existing role.
    pub static_role: Option<String>,
}

/// Audits one database.
pub fn analyse(catalog: &Catalog, declared: &Declared) -> Report {
    let mut a = Audit {
        catalog,
        declared,
        report: Report::default(),
        reported: BTreeSet::new(),
    };
    a.admin();
    a.orphans();
    a.expired();
    a.dangerous();
    a.drift();
    a.bloat();
    a.stale();
    a.report.sort();
    a.report
}

struct Audit<'a> {
    catalog: &'a Catalog,
    declared: &'a Declared,
    report: Report,
    /// Roles already reported as orphans (not reported again as expired).
    reported: BTreeSet<String>,
}

impl Audit<'_> {
    fn push(
        &mut self,
        kind: Kind,
        severity: Severity,
        role: &str,
        detail: String,
        fix: Option<String>,
    ) {
        self.report.findings.push(Finding {
            kind,
            severity,
            database: self.declared.database.clone(),
            role: role.to_owned(),
            detail,
            fix,
        });
    }

    fn note(&mut self, role: Option<&str>, detail: String) {
        self.report.notes.push(Note {
            database: self.declared.database.clone(),
            role: role.map(str::to_owned),
            detail,
        });
    }

    fn usable(&self, r: &crate::engine::catalog::CatalogRole) -> bool {
        r.can_login && r.valid_until.is_none_or(|v| v > self.catalog.now)
    }

    /// Whether another ledger owns `account` here (its scoped role says so).
    fn foreign(&self, account: &str) -> Option<String> {
        let mine = self.declared.ledger_id.as_deref();
        self.catalog.roles.iter().find_map(|r| {
            let m = r.managed.as_ref()?;
            (m.kind == ManagedKind::Scoped && m.account == account)
                .then(|| m.owner.clone())
                .flatten()
                .filter(|o| Some(o.as_str()) != mine)
        })
    }

    fn admin(&mut self) {
        let admin = self.catalog.admin.clone();
        let powers: Vec<String> = self
            .catalog
            .roles
            .iter()
            .find(|r| r.name == admin)
            .map(|r| r.dangerous.iter().map(|d| d.name.clone()).collect())
            .unwrap_or_default();
        let detail = if powers.is_empty() {
            format!("credrotd connects as this role ({})", self.catalog.server)
        } else {
            format!(
                "credrotd connects as this role ({}); it holds {}",
                self.catalog.server,
                powers.join(", ")
            )
        };
        self.note(Some(&admin), detail);
    }

    fn orphans(&mut self) {
        if !self.declared.ledger_read {
            self.note(
                None,
                "no ledger to read: logins of the inventory's accounts are not checked against it"
                    .to_owned(),
            );
        }
        for r in &self.catalog.roles {
            let Some(m) = &r.managed else { continue };
            let declared = self.declared.accounts.get(&m.account);
            if let Some(owner) = self.foreign(&m.account) {
                // Another inventory's account: its daemon answers for it.
                if m.kind == ManagedKind::Scoped {
                    self.note(
                        Some(&r.name),
                        format!(
                            "scoped role of account {} owned by ledger {owner}",
                            m.account
                        ),
                    );
                }
                continue;
            }
            let usable = self.usable(r);
            let why = match (m.kind, declared) {
                (ManagedKind::Scoped, None) => Some(format!(
                    "scoped role of account {}, which the inventory no longer lists",
                    m.account
                )),
                (ManagedKind::Login | ManagedKind::Alternating, None) => Some(format!(
                    "login of account {}, which the inventory no longer lists",
                    m.account
                )),
                (ManagedKind::Login, Some(d))
                    if self.declared.ledger_read
                        && !d.live.iter().any(|u| is_named(&r.name, u)) =>
                {
                    Some(format!(
                        "login of account {} that the ledger does not know",
                        m.account
                    ))
                }
                // A twin waits, unable to log in, for its next turn.
                (ManagedKind::Alternating, Some(d))
                    if self.declared.ledger_read
                        && usable
                        && !d.live.iter().any(|u| is_named(&r.name, u)) =>
                {
                    Some(format!(
                        "login of account {} that the ledger does not know",
                        m.account
                    ))
                }
                _ => None,
            };
            let Some(why) = why else { continue };
            let (severity, state) = if usable {
                (Severity::Error, "it can log in")
            } else {
                (Severity::Warning, "it cannot log in")
            };
            self.reported.insert(r.name.clone());
            self.push(
                Kind::Orphan,
                severity,
                &r.name,
                format!("{why}; {state}"),
                Some(r.drop_sql.clone()),
            );
        }
    }

    fn expired(&mut self) {
        let now = self.catalog.now;
        for r in &self.catalog.roles {
            let login_kind = r.managed.as_ref().map(|m| m.kind);
            if self.reported.contains(&r.name)
                || login_kind == Some(ManagedKind::Alternating)
                || login_kind == Some(ManagedKind::Scoped)
            {
                continue;
            }
            let Some(until) = r.valid_until.filter(|v| *v <= now) else {
                continue;
            };
            if !(r.can_login || login_kind == Some(ManagedKind::Login)) {
                continue;
            }
            let detail = if r.can_login {
                format!(
                    "expired at {} but still exists and has LOGIN",
                    fmt_time(until)
                )
            } else {
                format!("expired at {} and refuses logins but still exists (credrotd could not drop it)", fmt_time(until))
            };
            self.push(
                Kind::Expired,
                Severity::Warning,
                &r.name,
                detail,
                Some(r.drop_sql.clone()),
            );
        }
    }

    fn dangerous(&mut self) {
        let admin = self.catalog.admin.clone();
        for r in &self.catalog.roles {
            if r.name == admin || r.dangerous.is_empty() {
                continue;
            }
            if r.bootstrap {
                let names: Vec<&str> = r.dangerous.iter().map(|d| d.name.as_str()).collect();
                self.note(
                    Some(&r.name),
                    format!("the server's own administrator; holds {}", names.join(", ")),
                );
                continue;
            }
            for d in &r.dangerous {
                let severity = if d.name == "SUPERUSER" || d.name == "SUPER" {
                    Severity::Error
                } else {
                    Severity::Warning
                };
                let who = if r.can_login { "login role" } else { "role" };
                self.push(
                    Kind::Dangerous,
                    severity,
                    &r.name,
                    format!("{who} holds {}", d.name),
                    Some(d.fix.clone()),
                );
            }
        }
    }

    fn drift(&mut self) {
        for (account, plan) in &self.declared.plans {
            match plan {
                Ok(plan) => {
                    for c in &plan.changes {
                        self.push(
                            Kind::Drift,
                            Severity::Warning,
                            account,
                            format!("differs from the inventory; the next rotation runs: {c}"),
                            Some(c.0.clone()),
                        );
                    }
                    // What reconciliation already knows it cannot correct.
                    for st in &plan.stuck {
                        self.push(
                            Kind::Drift,
                            Severity::Warning,
                            account,
                            format!(
                                "differs from the inventory and credrotd cannot correct it: {st}"
                            ),
                            None,
                        );
                    }
                }
                Err(e) => self.push(
                    Kind::Drift,
                    Severity::Error,
                    account,
                    format!("cannot compare with the inventory: {e}"),
                    None,
                ),
            }
        }
        // What the plan does not correct on every engine (PostgreSQL's does:
        // its catalog says so): privileges of managed logins, column and
        // database-level privileges and grant options of scoped roles, other
        // members of a scoped role.
        if self.catalog.plan_covers_grants {
            return;
        }
        let managed: HashMap<&str, (ManagedKind, &str)> = self
            .catalog
            .roles
            .iter()
            .filter_map(|r| {
                let m = r.managed.as_ref()?;
                Some((r.name.as_str(), (m.kind, m.account.as_str())))
            })
            .collect();
        for p in &self.catalog.privileges {
            if p.owner {
                continue;
            }
            let Some((kind, account)) = managed.get(p.grantee.as_str()).copied() else {
                continue;
            };
            if !self.declared.accounts.contains_key(account) {
                continue;
            }
            let why = match (kind, &p.object) {
                (ManagedKind::Login | ManagedKind::Alternating, _) => {
                    Some(format!("login of account {account} holds a direct grant: {} on {} (its privileges come only from its scoped role)", p.privilege, p.object))
                }
                (ManagedKind::Scoped, Object::Column { .. }) => Some(format!(
                    "holds a column privilege the inventory does not declare: {} on {}",
                    p.privilege, p.object
                )),
                (ManagedKind::Scoped, Object::Database(_)) => Some(format!(
                    "holds a database privilege the inventory does not declare: {} on {}",
                    p.privilege, p.object
                )),
                (ManagedKind::Scoped, _) if p.grantable => Some(format!(
                    "holds {} on {} WITH GRANT OPTION (granted by {}): it may hand it on",
                    p.privilege, p.object, p.grantor
                )),
                _ => None,
            };
            if let Some(why) = why {
                self.push(
                    Kind::Drift,
                    Severity::Warning,
                    &p.grantee,
                    why,
                    Some(p.revoke_sql.clone()),
                );
            }
        }
        // Members of a scoped role other than its own logins.
        for m in &self.catalog.memberships {
            let Some((ManagedKind::Scoped, account)) = managed.get(m.role.as_str()).copied() else {
                continue;
            };
            let Some(d) = self.declared.accounts.get(account) else {
                continue;
            };
            let own = match managed.get(m.member.as_str()) {
                Some((ManagedKind::Login | ManagedKind::Alternating, a)) => *a == account,
                _ => false,
            };
            if own
                || d.static_role
                    .as_deref()
                    .is_some_and(|s| is_named(&m.member, s))
                || m.member == self.catalog.admin
            {
                continue;
            }
            self.push(
                Kind::Drift,
                Severity::Warning,
                &m.role,
                format!("{} is a member of account {account}'s scoped role and gets its privileges, but is none of its logins", m.member),
                Some(m.revoke_sql.clone()),
            );
        }
    }

    /// Roles whose privileges (their own and inherited) are the same, or one's
    /// within another's. Only roles holding grants of their own count (a login
    /// that only inherits is its group, not bloat), never two of credrotd's
    /// scoped roles (one per account is the design), never a role and one it
    /// inherits from, and no containment with a scoped role (its privileges are
    /// the account's declaration, not a candidate for merging).
    fn bloat(&mut self) {
        let sets = effective_sets(self.catalog);
        let skip: BTreeSet<&str> = self
            .catalog
            .roles
            .iter()
            .filter(|r| {
                r.bootstrap
                    || r.name == self.catalog.admin
                    || r.dangerous.iter().any(|d| d.name == "SUPERUSER")
            })
            .map(|r| r.name.as_str())
            .collect();
        let scoped: BTreeSet<&str> = self
            .catalog
            .roles
            .iter()
            .filter(|r| {
                r.managed.as_ref().is_some_and(|m| {
                    matches!(m.kind, ManagedKind::Scoped | ManagedKind::Privileges)
                })
            })
            .map(|r| r.name.as_str())
            .collect();
        // Classes of identical sets.
        let mut classes: BTreeMap<&BTreeSet<(Object, String)>, Vec<&str>> = BTreeMap::new();
        for (role, set) in &sets {
            if !skip.contains(role.as_str()) && !set.is_empty() {
                classes.entry(set).or_default().push(role.as_str());
            }
        }
        let ancestors = ancestors(self.catalog);
        let related = |a: &str, b: &str| {
            ancestors.get(a).is_some_and(|s| s.contains(b))
                || ancestors.get(b).is_some_and(|s| s.contains(a))
        };
        let mut findings = Vec::new();
        for (set, roles) in &classes {
            let roles: Vec<&str> = roles.to_vec();
            let all_scoped = roles.iter().all(|r| scoped.contains(r));
            let unrelated = roles
                .iter()
                .enumerate()
                .any(|(i, a)| roles[i + 1..].iter().any(|b| !related(a, b)));
            if roles.len() > 1 && !all_scoped && unrelated {
                findings.push((
                    roles[0].to_owned(),
                    format!(
                        "roles {} hold the same {} privileges: merge them into one",
                        roles.join(", "),
                        set.len()
                    ),
                ));
            }
        }
        // Containment between classes: an inverted index keeps it from being
        // quadratic in the number of roles.
        let class_list: Vec<(&GrantSet, &Vec<&str>)> =
            classes.iter().map(|(s, r)| (*s, r)).collect();
        let mut index: HashMap<&(Object, String), Vec<usize>> = HashMap::new();
        for (i, (set, _)) in class_list.iter().enumerate() {
            for e in set.iter() {
                index.entry(e).or_default().push(i);
            }
        }
        for (i, (set, roles)) in class_list.iter().enumerate() {
            let mut candidates: Option<BTreeSet<usize>> = None;
            let mut elems: Vec<&(Object, String)> = set.iter().collect();
            elems.sort_by_key(|e| index.get(e).map_or(0, Vec::len));
            for e in elems {
                let has: BTreeSet<usize> = index.get(e).into_iter().flatten().copied().collect();
                candidates = Some(match candidates {
                    None => has,
                    Some(c) => c.intersection(&has).copied().collect(),
                });
                if candidates.as_ref().is_some_and(|c| c.len() <= 1) {
                    break;
                }
            }
            for j in candidates.unwrap_or_default() {
                let (bigger, big_roles) = class_list[j];
                if j == i || bigger.len() <= set.len() || !set.is_subset(bigger) {
                    continue;
                }
                for small in roles.iter() {
                    for big in big_roles.iter() {
                        if scoped.contains(small) || scoped.contains(big) || related(small, big) {
                            continue;
                        }
                        findings.push((
                            (*small).to_owned(),
                            format!("every privilege of {small} ({}) is also held by {big} ({}): {big} could be granted {small} instead of repeating them", set.len(), bigger.len()),
                        ));
                    }
                }
            }
        }
        for (role, detail) in findings {
            self.push(Kind::Bloat, Severity::Info, &role, detail, None);
        }
    }

    fn stale(&mut self) {
        let Some(activity) = &self.declared.activity else {
            self.note(None, "no login activity sampled yet: stale logins are reported once the daemon has watched for stale_after".to_owned());
            return;
        };
        let now = self.catalog.now;
        let window = now - activity.since;
        if window < self.declared.stale_after {
            self.note(
                None,
                format!(
                    "login activity sampled since {} only: stale logins are reported once the daemon has watched for {}",
                    fmt_time(activity.since),
                    humantime::format_duration(self.declared.stale_after.to_std().unwrap_or_default())
                ),
            );
            return;
        }
        let cutoff = now - self.declared.stale_after;
        // MySQL's process list names the user without its host.
        let seen = |role: &str| {
            activity
                .last_seen
                .get(role)
                .or_else(|| {
                    activity
                        .last_seen
                        .get(role.split('@').next().unwrap_or(role))
                })
                .copied()
        };
        // Accounts: used when any of their logins was.
        let mut accounts: BTreeMap<&str, Option<DateTime<Utc>>> = BTreeMap::new();
        for r in &self.catalog.roles {
            match &r.managed {
                Some(m)
                    if self.declared.accounts.contains_key(&m.account)
                        && m.kind != ManagedKind::Scoped =>
                {
                    let last = accounts.entry(m.account.as_str()).or_default();
                    *last = (*last).max(seen(&r.name));
                }
                Some(m) if m.kind == ManagedKind::Scoped => {
                    accounts.entry(m.account.as_str()).or_default();
                }
                Some(_) => {}
                None if r.can_login && !r.bootstrap && r.name != self.catalog.admin => {
                    let is_static = self.declared.accounts.values().any(|d| {
                        d.static_role
                            .as_deref()
                            .is_some_and(|s| is_named(&r.name, s))
                    });
                    if is_static {
                        continue;
                    }
                    match seen(&r.name) {
                        Some(t) if t >= cutoff => {}
                        last => {
                            let detail = match last {
                                Some(t) => format!("login last seen at {}", fmt_time(t)),
                                None => format!(
                                    "login not seen since sampling began at {}",
                                    fmt_time(activity.since)
                                ),
                            };
                            self.push(
                                Kind::Stale,
                                Severity::Warning,
                                &r.name,
                                detail,
                                Some(r.drop_sql.clone()),
                            );
                        }
                    }
                }
                None => {}
            }
        }
        for (account, d) in &self.declared.accounts {
            if let Some(role) = &d.static_role {
                let last = accounts.entry(account.as_str()).or_default();
                *last = (*last).max(seen(role));
            }
        }
        for (account, last) in accounts {
            if !self.declared.accounts.contains_key(account) || last.is_some_and(|t| t >= cutoff) {
                continue;
            }
            let detail = match last {
                Some(t) => format!("no login of account {account} seen since {}", fmt_time(t)),
                None => format!(
                    "no login of account {account} seen since sampling began at {}",
                    fmt_time(activity.since)
                ),
            };
            self.push(Kind::Stale, Severity::Warning, account, detail, None);
        }
    }
}

/// What a role may do: (object, privilege) pairs.
type GrantSet = BTreeSet<(Object, String)>;

/// Whether the catalog's `role` is the login `name` the ledger or the
/// inventory knows: MySQL names a user `user@host`.
fn is_named(role: &str, name: &str) -> bool {
    role == name || role.rsplit_once('@').is_some_and(|(user, _)| user == name)
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// Every role's ancestors: the roles whose privileges it inherits.
fn ancestors(catalog: &Catalog) -> HashMap<&str, BTreeSet<&str>> {
    let mut parents: HashMap<&str, Vec<&str>> = HashMap::new();
    for m in &catalog.memberships {
        parents
            .entry(m.member.as_str())
            .or_default()
            .push(m.role.as_str());
    }
    let mut out = HashMap::new();
    for r in &catalog.roles {
        let mut seen = BTreeSet::new();
        let mut queue: VecDeque<&str> = parents
            .get(r.name.as_str())
            .into_iter()
            .flatten()
            .copied()
            .collect();
        while let Some(p) = queue.pop_front() {
            if seen.insert(p) {
                queue.extend(parents.get(p).into_iter().flatten().copied());
            }
        }
        out.insert(r.name.as_str(), seen);
    }
    out
}

/// For every role holding privileges of its own: those and the ones it
/// inherits, as (object, privilege). Owners' implicit rights are left out.
fn effective_sets(catalog: &Catalog) -> BTreeMap<String, BTreeSet<(Object, String)>> {
    let mut direct: HashMap<&str, BTreeSet<(Object, String)>> = HashMap::new();
    for p in catalog.privileges.iter().filter(|p| !p.owner) {
        direct
            .entry(p.grantee.as_str())
            .or_default()
            .insert((p.object.clone(), p.privilege.clone()));
    }
    let ancestors = ancestors(catalog);
    let mut out = BTreeMap::new();
    for (role, own) in &direct {
        let mut set = own.clone();
        for a in ancestors.get(role).into_iter().flatten() {
            if let Some(more) = direct.get(a) {
                set.extend(more.iter().cloned());
            }
        }
        out.insert((*role).to_owned(), set);
    }
    out
}

/// One role that can do what `who-can` asks, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub role: String,
    pub can_login: bool,
    /// From the role to the one holding the privilege: `[role, group, ...]`
    /// (just `[role]` when it holds it itself).
    pub chain: Vec<String>,
    /// What gives it at the end of the chain: `SELECT on table app.orders`,
    /// `owner of table app.orders`, `SUPERUSER`.
    pub via: String,
}

/// The objects `target` (`schema.object`, `schema.table.column`, `schema`)
/// can name in this catalog.
pub fn resolve(catalog: &Catalog, target: &str) -> Vec<Object> {
    let mut out: BTreeSet<Object> = BTreeSet::new();
    let (schema, rest) = match target.split_once('.') {
        Some((s, r)) => (s, Some(r)),
        None => (target, None),
    };
    let all = catalog.privileges.iter().map(|p| &p.object);
    for o in all {
        let hit = match (o, rest) {
            (Object::Schema(s), None) | (Object::Database(s), None) => s == schema,
            (Object::Table { schema: s, name } | Object::Sequence { schema: s, name }, Some(r)) => {
                s == schema && name == r
            }
            (Object::Routine { schema: s, name }, Some(r)) => {
                s == schema
                    && (name == r || name.strip_prefix(r).is_some_and(|a| a.starts_with('(')))
            }
            (
                Object::Column {
                    schema: s,
                    table,
                    column,
                },
                Some(r),
            ) => {
                s == schema
                    && r.split_once('.')
                        .is_some_and(|(t, c)| t == table && c == column)
            }
            _ => false,
        };
        if hit {
            out.insert(o.clone());
        }
    }
    if out.is_empty() {
        // Nobody holds anything on it directly: still answer for the table
        // (its owner's and superusers' rights).
        match rest {
            Some(r) => {
                out.insert(Object::Table {
                    schema: schema.to_owned(),
                    name: r.to_owned(),
                });
            }
            None => {
                out.insert(Object::Schema(schema.to_owned()));
            }
        }
    }
    out.into_iter().collect()
}

/// Every role that can effectively use `privilege` on `target`, with the
/// membership chain that gives it. `PUBLIC` grants reach every role; a
/// superuser (PostgreSQL) may do anything.
pub fn who_can(catalog: &Catalog, privilege: &str, targets: &[Object]) -> Vec<Holder> {
    let privilege = privilege.trim().to_ascii_uppercase();
    let mut holders: BTreeMap<&str, String> = BTreeMap::new();
    let mut public: Option<String> = None;
    let matches = |p: &Privilege| {
        targets.iter().any(|t| p.object.covers(t))
            && (p.privilege == privilege || p.privilege == "ALL" || p.privilege == "ALL PRIVILEGES")
    };
    for p in catalog.privileges.iter().filter(|p| matches(p)) {
        let via = if p.owner {
            format!("owner of {}", p.object)
        } else {
            format!("{} on {}", p.privilege, p.object)
        };
        if p.grantee == "PUBLIC" {
            public.get_or_insert(via);
        } else {
            holders.entry(p.grantee.as_str()).or_insert(via);
        }
    }
    for r in &catalog.roles {
        if r.dangerous.iter().any(|d| d.name == "SUPERUSER") {
            holders
                .entry(r.name.as_str())
                .or_insert_with(|| "SUPERUSER".to_owned());
        }
    }
    // Breadth-first from the holders down to their members: the shortest chain.
    let mut members: HashMap<&str, Vec<&str>> = HashMap::new();
    for m in &catalog.memberships {
        members
            .entry(m.role.as_str())
            .or_default()
            .push(m.member.as_str());
    }
    let mut found: BTreeMap<&str, (Vec<String>, String)> = BTreeMap::new();
    let mut queue: VecDeque<(&str, Vec<String>, String)> = holders
        .iter()
        .map(|(r, via)| (*r, vec![(*r).to_owned()], via.clone()))
        .collect();
    while let Some((role, chain, via)) = queue.pop_front() {
        if found.contains_key(role) {
            continue;
        }
        for m in members.get(role).into_iter().flatten() {
            if !found.contains_key(m) {
                let mut c = vec![(*m).to_owned()];
                c.extend(chain.iter().cloned());
                queue.push_back((m, c, via.clone()));
            }
        }
        found.insert(role, (chain, via));
    }
    let login: HashMap<&str, bool> = catalog
        .roles
        .iter()
        .map(|r| (r.name.as_str(), r.can_login))
        .collect();
    if let Some(via) = public {
        for r in &catalog.roles {
            found
                .entry(r.name.as_str())
                .or_insert_with(|| (vec![r.name.clone(), "PUBLIC".to_owned()], via.clone()));
        }
    }
    found
        .into_iter()
        .filter(|(role, _)| login.contains_key(role))
        .map(|(role, (chain, via))| Holder {
            role: role.to_owned(),
            can_login: login.get(role).copied().unwrap_or(false),
            chain,
            via,
        })
        .collect()
}

/// How long a login may go unused before `audit` calls it stale, when the
/// inventory does not say.
pub const DEFAULT_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// Audits every database of the inventory (or only `only`): reads each
/// catalog, plans each account's reconciliation (read-only) and compares. A
/// database that cannot be read is an error of the report, not a failure of
/// the others.
pub async fn collect(
    inventory: &crate::inventory::Inventory,
    engines: &crate::engine::Engines,
    ledger: Option<&crate::ledger::Ledger>,
    activity: Option<&BTreeMap<String, Activity>>,
    only: Option<&str>,
    stale_after: std::time::Duration,
    progress: &crate::progress::Progress,
) -> Report {
    let mut report = Report::default();
    for (name, engine) in engines {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let result = audit_one(
            inventory,
            name,
            engine.as_ref(),
            ledger,
            activity,
            stale_after,
        )
        .await;
        progress.item_done(result.is_ok());
        match result {
            Ok(r) => {
                report.findings.extend(r.findings);
                report.notes.extend(r.notes);
            }
            Err(e) => report.errors.push(e),
        }
    }
    progress.finish();
    report.sort();
    report
}

async fn audit_one(
    inventory: &crate::inventory::Inventory,
    name: &str,
    engine: &dyn crate::engine::Engine,
    ledger: Option<&crate::ledger::Ledger>,
    activity: Option<&BTreeMap<String, Activity>>,
    stale_after: std::time::Duration,
) -> Result<Report, String> {
    let catalog = engine.catalog().await.map_err(|e| e.to_string())?;
    let mut declared = Declared {
        database: name.to_owned(),
        ledger_id: ledger.map(|l| l.id().to_owned()),
        ledger_read: ledger.is_some(),
        activity: activity.and_then(|a| a.get(name)).cloned(),
        stale_after: chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX),
        ..Declared::default()
    };
    for account in inventory.accounts.values().filter(|a| a.database == name) {
        let live = match ledger {
            Some(l) => l
                .live(&account.name)
                .await
                .map_err(|e| format!("ledger: {e}"))?
                .into_iter()
                .map(|c| c.username)
                .collect(),
            None => BTreeSet::new(),
        };
        let static_role = match &account.strategy {
            crate::inventory::Strategy::Static { role, .. } => Some(role.clone()),
            _ => None,
        };
        declared
            .accounts
            .insert(account.name.clone(), DeclaredAccount { live, static_role });
    }
    // Plans, as many at once as rotations run (each is one read-only
    // transaction on the admin pool).
    use futures::stream::{self, StreamExt};
    let accounts: Vec<&crate::inventory::Account> = inventory
        .accounts
        .values()
        .filter(|a| a.database == name)
        .collect();
    let plans: Vec<_> = accounts.into_iter().map(|a| plan_of(engine, a)).collect();
    declared.plans = stream::iter(plans)
        .buffer_unordered(inventory.rotation.concurrency.max(1))
        .collect()
        .await;
    Ok(analyse(&catalog, &declared))
}

async fn plan_of(
    engine: &dyn crate::engine::Engine,
    account: &crate::inventory::Account,
) -> (String, Result<Reconciled, String>) {
    let plan = engine
        .reconcile(account, false)
        .await
        .map_err(|e| e.to_string());
    (account.name.clone(), plan)
}
