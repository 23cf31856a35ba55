//! Validation of the raw inventory into an [`Inventory`], one file per section:
//! `databases.rs`, `stores.rs`, `accounts.rs` (accounts and their grants) and
//! `policy.rs` (the environment and the credential-lifetime rules production
//! enforces). This file has the [`Validator`] (diagnostics, the policy helper)
//! and the entry point, [`Validator::inventory`], which walks the sections.

mod accounts;
mod databases;
mod policy;
mod stores;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use serde_saphyr::{Location, Spanned};

use super::raw::{RawInventory, S};
use super::{
    Account, AdminConfig, AuditConfig, Diagnostic, Environment, Inventory, MetricsConfig,
    RotationConfig, Severity, Strategy,
};
use crate::schedule::Schedule;

static ACCOUNT_NAME_RULE: &str = "^[a-z][a-z0-9_]{0,39}$";

pub(crate) fn is_account_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 40
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// Object and role names are quoted with the server's rules, so any text is safe
/// in a statement; we still refuse what no sane catalog holds.
pub(crate) fn identifier_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("must not be empty")
    } else if s.len() > 63 {
        Some("is longer than 63 bytes, the PostgreSQL identifier limit")
    } else if s.chars().any(|c| c.is_control() || c == '"') {
        Some("contains a control character or a double quote")
    } else {
        None
    }
}

pub(super) struct Validator {
    pub(super) file: PathBuf,
    pub(super) base: PathBuf,
    pub(super) diags: Vec<Diagnostic>,
    pub(super) environment: Environment,
    /// Databases and stores that were reported as unsupported, so that accounts
    /// naming them do not also get "unknown database".
    pub(super) unsupported: BTreeSet<String>,
}

struct Defaults {
    schedule: Option<S<String>>,
    overlap: Option<S<String>>,
    expiry_margin: Option<S<String>>,
    max_lifetime: Option<S<String>>,
    strategy: Option<S<String>>,
    store: Option<S<Vec<String>>>,
}

impl Validator {
    fn push(&mut self, at: &Location, severity: Severity, message: String) {
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            line: at.line().max(1),
            column: at.column().max(1),
            severity,
            message,
        });
    }

    fn error(&mut self, at: &Location, message: impl Into<String>) {
        self.push(at, Severity::Error, message.into());
    }

    fn warn(&mut self, at: &Location, message: impl Into<String>) {
        self.push(at, Severity::Warning, message.into());
    }

    /// A rule of the environment policy: an error in production, a warning that
    /// says what production would refuse elsewhere.
    fn policy(&mut self, at: &Location, message: impl Into<String>) {
        let message = message.into();
        if self.environment == Environment::Production {
            self.error(at, message);
        } else {
            self.warn(at, format!("production would refuse this: {message}"));
        }
    }

    fn duration(&mut self, v: &S<String>, what: &str) -> Option<Duration> {
        let text = v.value.trim();
        if text == "0" {
            return Some(Duration::ZERO);
        }
        match humantime::parse_duration(text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    &v.referenced,
                    format!(
                        "{what}: invalid duration {text:?} ({e}); expected e.g. 30s, 15m, 6h, 7d"
                    ),
                );
                None
            }
        }
    }

    /// A secret file: relative paths are resolved against systemd's
    /// `$CREDENTIALS_DIRECTORY` (where `LoadCredential=` puts them) when it is
    /// set, else against the inventory's directory.
    fn secret_path(&self, p: &str) -> PathBuf {
        match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) if Path::new(p).is_relative() => PathBuf::from(dir).join(p),
            _ => self.path(p),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }

    pub(super) fn inventory(&mut self, raw: RawInventory) -> Option<Inventory> {
        let top = raw.version.referenced;
        if raw.version.value != 1 {
            self.error(
                &raw.version.referenced,
                format!(
                    "unsupported inventory version {}; expected 1",
                    raw.version.value
                ),
            );
        }
        self.environment = self.read_environment(&raw.environment, top);
        let state = match &raw.state {
            None => "sqlite:///var/lib/credrotd/state.db".to_owned(),
            Some(s) => {
                if s.value.starts_with("sqlite:") {
                    s.value.clone()
                } else if s.value.starts_with("postgres://") || s.value.starts_with("postgresql://")
                {
                    self.error(
                        &s.referenced,
                        "a PostgreSQL ledger (for several replicas) is not supported yet; use sqlite:///path/state.db",
                    );
                    s.value.clone()
                } else {
                    self.error(
                        &s.referenced,
                        format!("state: expected a sqlite:// URL, found {:?}", s.value),
                    );
                    s.value.clone()
                }
            }
        };
        let timezone = match &raw.timezone {
            None => chrono_tz::UTC,
            Some(tz) => match tz.value.parse::<Tz>() {
                Ok(tz) => tz,
                Err(_) => {
                    self.error(
                        &tz.referenced,
                        format!("unknown time zone {:?}; expected an IANA name such as UTC or Europe/Paris", tz.value),
                    );
                    chrono_tz::UTC
                }
            },
        };
        let admin = raw.admin.map(|a| AdminConfig {
            socket: a
                .socket
                .map(|s| self.path(&s.value))
                .unwrap_or_else(|| PathBuf::from("/run/credrotd/admin.sock")),
            allow_uids: if a.allow_uids.is_empty() {
                vec![0]
            } else {
                a.allow_uids
            },
            allow_gids: a.allow_gids,
        });
        let metrics = raw.metrics.and_then(|m| match m.listen.value.parse() {
            Ok(listen) => Some(MetricsConfig { listen }),
            Err(_) => {
                self.error(
                    &m.listen.referenced,
                    format!(
                        "metrics.listen: expected host:port such as 127.0.0.1:9477, found {:?}",
                        m.listen.value
                    ),
                );
                None
            }
        });
        let mut audit = AuditConfig::default();
        if let Some(a) = raw.audit {
            if let Some(s) = &a.schedule {
                match Schedule::parse(&s.value, timezone) {
                    Ok(s) => audit.schedule = Some(s),
                    Err(e) => self.error(&s.referenced, format!("audit.schedule: {e}")),
                }
            }
            if let Some(d) = a
                .stale_after
                .as_ref()
                .and_then(|d| self.duration(d, "audit.stale_after"))
            {
                if d < Duration::from_secs(3600) {
                    self.error(
                        &a.stale_after.as_ref().unwrap().referenced,
                        "audit.stale_after must be at least 1h: sampling sees sessions, not every login",
                    );
                } else {
                    audit.stale_after = d;
                }
            }
            if let Some(d) = a
                .sample_every
                .as_ref()
                .and_then(|d| self.duration(d, "audit.sample_every"))
            {
                if d < Duration::from_secs(1) {
                    self.error(
                        &a.sample_every.as_ref().unwrap().referenced,
                        "audit.sample_every must be at least 1s",
                    );
                } else {
                    audit.sample_every = d;
                }
            }
        }
        let mut rotation = RotationConfig::default();
        if let Some(r) = raw.rotation {
            if let Some(c) = r.concurrency {
                if c.value == 0 || c.value > 1024 {
                    self.error(
                        &c.referenced,
                        "rotation.concurrency must be between 1 and 1024",
                    );
                } else {
                    rotation.concurrency = c.value as usize;
                }
            }
            if let Some(d) = r
                .retry_initial
                .as_ref()
                .and_then(|d| self.duration(d, "rotation.retry_initial"))
            {
                rotation.retry_initial = d.max(Duration::from_secs(1));
            }
            if let Some(d) = r
                .retry_max
                .as_ref()
                .and_then(|d| self.duration(d, "rotation.retry_max"))
            {
                rotation.retry_max = d.max(rotation.retry_initial);
            }
        }
        let d = raw.defaults.unwrap_or_default();
        let defaults = Defaults {
            schedule: d.schedule,
            overlap: d.overlap,
            expiry_margin: d.expiry_margin,
            max_lifetime: d.max_lifetime,
            strategy: d.strategy,
            store: d
                .store
                .map(|s| Spanned::new(s.value.into_vec(), s.referenced, s.defined)),
        };

        let mut databases = BTreeMap::new();
        for (name, db) in raw.databases.0 {
            if databases.contains_key(&name.value) {
                self.error(
                    &name.referenced,
                    format!("database {:?} is defined twice", name.value),
                );
                continue;
            }
            if let Some(db) = self.database(&name, db) {
                databases.insert(name.value.clone(), db);
            }
        }
        let mut stores = BTreeMap::new();
        for (name, st) in raw.stores.0 {
            if stores.contains_key(&name.value) {
                self.error(
                    &name.referenced,
                    format!("store {:?} is defined twice", name.value),
                );
                continue;
            }
            if let Some(st) = self.store(&name, st) {
                stores.insert(name.value.clone(), st);
            }
        }
        let mut accounts: BTreeMap<String, Account> = BTreeMap::new();
        let mut role_names: BTreeMap<String, String> = BTreeMap::new();
        for (name, acc) in raw.accounts.0 {
            if accounts.contains_key(&name.value) {
                self.error(
                    &name.referenced,
                    format!("account {:?} is defined twice", name.value),
                );
                continue;
            }
            if let Some(acc) = self.account(&name, acc, &defaults, &databases, &stores, timezone) {
                // Login roles of one account must never look like another's.
                for derived in derived_role_names(&acc) {
                    if let Some(other) = role_names.insert(derived.clone(), acc.name.clone()) {
                        self.error(
                            &name.referenced,
                            format!("account {:?} would use role {derived:?}, which account {other:?} also uses", acc.name),
                        );
                    }
                }
                accounts.insert(acc.name.clone(), acc);
            }
        }
        if accounts.is_empty() && self.diags.iter().all(|d| d.severity != Severity::Error) {
            self.warn(&top, "the inventory lists no accounts");
        }
        Some(Inventory {
            source: self.file.clone(),
            environment: self.environment,
            state,
            timezone,
            admin,
            metrics,
            audit,
            rotation,
            prune: raw.prune.is_some_and(|p| p.value),
            databases,
            stores,
            accounts,
        })
    }

    fn error_count(&self) -> usize {
        self.diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }
}

/// The login role names an account's strategy uses (besides its scoped role).
fn derived_role_names(acc: &Account) -> Vec<String> {
    let mut names = vec![acc.name.clone()];
    match &acc.strategy {
        Strategy::Alternating => {
            names.push(format!("{}_a", acc.name));
            names.push(format!("{}_b", acc.name));
        }
        Strategy::Static { role, .. } => names.push(role.clone()),
        Strategy::Ephemeral => {}
    }
    names
}

fn list<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = keys.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
