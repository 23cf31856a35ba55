//! Target databases. The [`Engine`] trait is the saga's narrow view of a database;
//! [`postgres`] and [`mysql`] (MySQL 8 and MariaDB) implement it. **Architecture invariant:** only this module writes
//! SQL against target databases, and every name in that SQL is quoted with the
//! server's own rules.

pub mod catalog;
pub mod mysql;
pub mod postgres;
pub mod transport;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::inventory::{Account, Database, EngineKind, Inventory};
use crate::secret::Secret;

/// A login credential to create or set.
#[derive(Debug)]
pub struct Login<'a> {
    pub username: &'a str,
    pub password: &'a Secret,
    /// The database refuses the credential after this instant.
    pub valid_until: DateTime<Utc>,
}

/// A role's password verifier and expiry as they were before a static rotation.
#[derive(Debug, Clone)]
pub struct SavedPassword {
    /// The server's stored verifier (e.g. `SCRAM-SHA-256$...`), never a plaintext.
    pub verifier: Secret,
    /// As in [`LoginInfo::valid_until`]: `None` never expires (no `VALID UNTIL`, or
    /// `'infinity'`; restored as `'infinity'`), [`DateTime::<Utc>::MIN_UTC`] is
    /// `'-infinity'` (restored as `'-infinity'`).
    pub valid_until: Option<DateTime<Utc>>,
}

/// What the database says about a login role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginInfo {
    pub can_login: bool,
    /// `None`: never expires (no `VALID UNTIL`, `'infinity'`, or a date beyond what
    /// `chrono` can represent). `Some(DateTime::<Utc>::MIN_UTC)`: `'-infinity'`,
    /// expired since forever.
    pub valid_until: Option<DateTime<Utc>>,
}

/// What reconciliation did (or, in a plan, would do) to an account's scoped role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Statements that were applied (or would be).
    pub changes: Vec<Change>,
    /// Housekeeping that could not be done: a declared object that no longer
    /// exists, a statement the admin may not run, a revoke that had no effect.
    /// None of these keeps the account from being issued a credential.
    pub stuck: Vec<Stuck>,
}

/// One piece of housekeeping that could not be done. Never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    /// The statement, or the object (`table public.orders`), concerned. Stable
    /// from one attempt to the next, so that callers can recognise a retry.
    pub what: String,
    /// Why, in the server's words where there are any.
    pub error: String,
}

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.error)
    }
}

/// Which ledger owns an account, as recorded on its scoped role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    /// The owning ledger's id; `None` for a managed role without an owner (created
    /// by a version that did not record one, or not claimed yet).
    pub ledger: Option<String>,
    /// When the owner last claimed the role.
    pub seen: Option<DateTime<Utc>>,
}

/// Something the admin role lacks, found by [`Engine::check_admin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminGap {
    /// What is missing and what it breaks, e.g. `credrotd_admin cannot grant
    /// SELECT on table public.orders (no grant option)`.
    pub missing: String,
    /// The SQL that would fix it (to be run by a superuser, the object's owner or
    /// the managed service's master user), when there is one.
    pub fix: Option<String>,
}

impl std::fmt::Display for AdminGap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.fix {
            Some(fix) => write!(f, "{}: {fix}", self.missing),
            None => f.write_str(&self.missing),
        }
    }
}

/// Whether `id` is a valid ledger id: `[a-z0-9-]{1,64}`.
pub fn valid_ledger_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// One change reconciliation made or would make, as SQL text without secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change(pub String);

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Errors from a target database. Messages name the database and role, never a
/// password.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("database {database}: cannot read the admin password: {source}")]
    Password {
        database: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database {database}: invalid connection url: {source}")]
    Url {
        database: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database {database}: {action}: {source}")]
    Sql {
        database: String,
        action: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database {database}: role {role} exists but is not managed by credrotd; refusing to take it over (drop or rename it, or pick another account name)")]
    NotManaged { database: String, role: String },
    #[error("database {database}: {what} does not exist")]
    Missing { database: String, what: String },
    #[error("database {database}: role {role} has dangerous attributes ({attributes}); an account may not be a member of it")]
    Dangerous {
        database: String,
        role: String,
        attributes: String,
    },
    #[error("database {database}: login as {username} failed: {source}")]
    Verify {
        database: String,
        username: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database {database}: role {role} cannot be dropped: objects in database {} depend on it (it refuses logins and has expired); in each of them run REASSIGN OWNED BY {role} TO {scoped}; DROP OWNED BY {role}", databases.join(", "))]
    Dependents {
        database: String,
        role: String,
        /// The scoped role the objects should go to.
        scoped: String,
        /// The other databases holding objects that depend on the role.
        databases: Vec<String>,
    },
    #[error("database {database}: login {role} is the DEFINER of {}; it is locked and kept, since dropping it would break them: give them another DEFINER (or drop them) and credrotd drops the login at its next attempt", objects.join(", "))]
    Definer {
        database: String,
        role: String,
        /// `view db.v`, `procedure db.p`, `trigger db.t`, `event db.e`.
        objects: Vec<String>,
    },
    #[error("database {database}: {what}")]
    Invalid { database: String, what: String },
}

impl EngineError {
    /// The database the error concerns.
    pub fn database(&self) -> &str {
        match self {
            EngineError::Password { database, .. }
            | EngineError::Url { database, .. }
            | EngineError::Sql { database, .. }
            | EngineError::NotManaged { database, .. }
            | EngineError::Missing { database, .. }
            | EngineError::Dangerous { database, .. }
            | EngineError::Verify { database, .. }
            | EngineError::Dependents { database, .. }
            | EngineError::Definer { database, .. }
            | EngineError::Invalid { database, .. } => database,
        }
    }
}

/// The operations the rotation saga needs from a target database. Every method is
/// idempotent, so a retried or recovered step is safe to run twice.
#[async_trait]
pub trait Engine: Send + Sync {
    /// Brings the account's scoped role to exactly the declared grants, memberships
    /// and settings. With `apply == false` only reports what it would change.
    ///
    /// Housekeeping never fails the call: a grant on a declared object that no
    /// longer exists is skipped, and a single GRANT, REVOKE or ALTER DEFAULT
    /// PRIVILEGES the admin may not run (or that has no effect) is undone and
    /// skipped; both are reported in [`Reconciled::stuck`] while the rest applies.
    /// Objects the scoped role owns itself are left alone. (A plan reports
    /// missing objects, and default privileges the admin may not change, as
    /// stuck; which GRANT would be refused it cannot know:
    /// [`Engine::check_admin`] says that.) `Err` only when the scoped role itself
    /// cannot be made usable: the database does not answer, the role cannot be
    /// created or made safe, it is not credrotd's ([`EngineError::NotManaged`]; a
    /// managed role is accepted whatever ledger owns it), a `member_of` role has
    /// dangerous attributes, a setting cannot be set (a row-level security policy
    /// may read it), or a static account's role is missing or cannot be made a
    /// member. A new scoped role gets the marker without an owner: the caller
    /// [`claim`](Engine::claim)s it.
    async fn reconcile(&self, account: &Account, apply: bool) -> Result<Reconciled, EngineError>;

    /// Creates a new login role that is a member of the scoped role (ephemeral).
    async fn create_login(&self, account: &Account, login: &Login<'_>) -> Result<(), EngineError>;

    /// Makes sure a fixed login role exists (alternating), without login rights.
    async fn ensure_fixed_login(
        &self,
        account: &Account,
        username: &str,
    ) -> Result<(), EngineError>;

    /// Sets a new password and expiry on an existing role and lets it log in.
    async fn set_password(&self, account: &Account, login: &Login<'_>) -> Result<(), EngineError>;

    /// Logs in with the credential and runs a trivial query.
    async fn verify(&self, username: &str, password: &Secret) -> Result<(), EngineError>;

    /// Refuses new logins for the role and expires its password: `NOLOGIN` and
    /// `VALID UNTIL` the server's current time (an earlier expiry is kept). Either
    /// alone would do; both mean that a role someone gives `LOGIN` back by hand
    /// still cannot log in with the old password, and `VALID UNTIL` records when it
    /// was revoked. Sessions already open are not affected (see
    /// [`Engine::terminate_sessions`]). A role that does not exist is not an error.
    async fn disable_login(&self, username: &str) -> Result<(), EngineError>;

    /// Ends every session of the role; returns how many.
    async fn terminate_sessions(&self, username: &str) -> Result<u64, EngineError>;

    /// Drops a login role after handing its objects to the scoped role. A role
    /// that does not exist is not an error. Works for a `CREATEROLE` admin that is
    /// not a superuser. When the role cannot be dropped (e.g.
    /// [`EngineError::Dependents`]: it owns objects in another database), it is at
    /// least left refusing logins and expired, and the error says why.
    async fn drop_login(&self, account: &Account, username: &str) -> Result<(), EngineError>;

    /// The login role's state, or `None` if it does not exist.
    async fn login_info(&self, username: &str) -> Result<Option<LoginInfo>, EngineError>;

    /// The per-rotation login roles this engine marked as belonging to `account`.
    async fn managed_logins(&self, account: &Account) -> Result<Vec<String>, EngineError>;

    /// Host, port and database name that applications should be told.
    fn endpoint(&self) -> Endpoint;

    /// Moves a login's expiry (`VALID UNTIL`) to `until`.
    async fn extend_login(
        &self,
        _username: &str,
        _until: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        Ok(())
    }

    /// Ends the overlap of a static rotation where the server keeps two
    /// passwords (MySQL 8's `RETAIN CURRENT PASSWORD`): the old one stops
    /// working. Elsewhere a no-op.
    async fn discard_old_password(&self, _username: &str) -> Result<(), EngineError> {
        Ok(())
    }

    /// What `plan` says about the server and the paths the engine takes on it
    /// (e.g. MySQL or MariaDB, which password hash, whether static accounts
    /// overlap); `None` when there is nothing to say.
    async fn describe(&self) -> Result<Option<String>, EngineError> {
        Ok(None)
    }

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), EngineError> {
        Ok(())
    }

    /// The role's current password verifier, to restore if a static rotation
    /// fails; `None` when the admin may not read it.
    async fn saved_password(&self, _role: &str) -> Result<Option<SavedPassword>, EngineError> {
        Ok(None)
    }

    /// Puts a saved verifier back.
    async fn restore_password(
        &self,
        _role: &str,
        _saved: &SavedPassword,
    ) -> Result<(), EngineError> {
        Ok(())
    }

    /// Which ledger owns the account, from its scoped role's marker. `None` when
    /// the scoped role does not exist; [`EngineError::NotManaged`] when it exists
    /// but is not credrotd's. The default (engines without a marker) is `None`.
    async fn owner(&self, _account: &Account) -> Result<Option<Owner>, EngineError> {
        Ok(None)
    }

    /// Records `ledger` (`[a-z0-9-]{1,64}`, else [`EngineError::Invalid`]) as the
    /// account's owner, seen at `now`, on its scoped role; only on a managed
    /// scoped role ([`EngineError::Missing`] if there is none,
    /// [`EngineError::NotManaged`] if it is not credrotd's). It overwrites any
    /// previous owner: deciding whether that is allowed is the caller's.
    async fn claim(
        &self,
        _account: &Account,
        _ledger: &str,
        _now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        Ok(())
    }

    /// Announces that the daemon of `ledger` is running: holds a session-level
    /// advisory lock keyed on the ledger id on a connection of its own for as
    /// long as the process lives (the server releases it when the process or
    /// the connection dies). Re-establishes it when that connection was lost.
    async fn hold_presence(&self, _ledger: &str) -> Result<(), EngineError> {
        Ok(())
    }

    /// Whether some process holds `ledger`'s presence lock in this database
    /// (see [`Engine::hold_presence`]): its daemon is running.
    async fn presence(&self, _ledger: &str) -> Result<bool, EngineError> {
        Ok(false)
    }

    /// What the admin role lacks to manage `accounts` (of this database), each
    /// with the SQL that would fix it; empty when nothing is missing (always for a
    /// superuser). Read-only.
    async fn check_admin(&self, _accounts: &[&Account]) -> Result<Vec<AdminGap>, EngineError> {
        Ok(Vec::new())
    }

    /// Every role of the database, its memberships and the privileges each
    /// holds directly, for `audit` and `who-can`. Read-only.
    /// The roles that have a session now (one sample, for stale-login
    /// detection). Read-only.
    async fn sessions(&self) -> Result<Vec<String>, EngineError> {
        Err(EngineError::Invalid {
            database: self.endpoint().dbname,
            what: "this engine cannot list sessions yet".to_owned(),
        })
    }

    /// Every role of the database, its memberships and the privileges each
    /// holds directly, for `audit` and `who-can`. Read-only.
    async fn catalog(&self) -> Result<catalog::Catalog, EngineError> {
        Err(EngineError::Invalid {
            database: self.endpoint().dbname,
            what: "this engine cannot be audited yet".to_owned(),
        })
    }
}

/// Where applications connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub engine: &'static str,
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

impl Endpoint {
    /// The scheme of the payload's `url`: what drivers of this engine take
    /// (MariaDB's drivers take `mysql://` too).
    pub fn url_scheme(&self) -> &'static str {
        match self.engine {
            "mysql" | "mariadb" => "mysql",
            _ => "postgres",
        }
    }
}

/// Engines by database name.
pub type Engines = BTreeMap<String, Arc<dyn Engine>>;

/// Builds an engine for every database of the inventory. Connections are opened
/// lazily, so this does no network IO.
pub fn build(inventory: &Inventory) -> Result<Engines, EngineError> {
    inventory
        .databases
        .values()
        .map(|db| Ok((db.name.clone(), build_one(db)?)))
        .collect()
}

/// The engine for one database (connections open lazily).
pub fn build_one(db: &Database) -> Result<Arc<dyn Engine>, EngineError> {
    match db.engine {
        EngineKind::Postgres => Ok(Arc::new(postgres::Postgres::new(db)?)),
        EngineKind::Mysql | EngineKind::Mariadb => Ok(Arc::new(mysql::Mysql::new(db)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::valid_ledger_id;

    #[test]
    fn ledger_ids_are_short_lowercase_digits_and_dashes() {
        for ok in ["a", "0", "prod-eu-1", &"x".repeat(64)] {
            assert!(valid_ledger_id(ok), "{ok}");
        }
        for bad in ["", "A", "a_b", "a b", "a=b", "é", &"x".repeat(65), "a\n"] {
            assert!(!valid_ledger_id(bad), "{bad:?}");
        }
    }
}
