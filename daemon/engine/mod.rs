//! Target databases. The [`Engine`] trait is the saga's narrow view of a database;
//! [`postgres`] implements it. **Architecture invariant:** only this module writes
//! SQL against target databases, and every name in that SQL is quoted with the
//! server's own rules.

pub mod postgres;

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
    pub valid_until: Option<DateTime<Utc>>,
}

/// What the database says about a login role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginInfo {
    pub can_login: bool,
    pub valid_until: Option<DateTime<Utc>>,
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
            | EngineError::Verify { database, .. } => database,
        }
    }
}

/// The operations the rotation saga needs from a target database. Every method is
/// idempotent, so a retried or recovered step is safe to run twice.
#[async_trait]
pub trait Engine: Send + Sync {
    /// Brings the account's scoped role to exactly the declared grants, memberships
    /// and settings. With `apply == false` only reports what it would change.
    async fn reconcile(&self, account: &Account, apply: bool) -> Result<Vec<Change>, EngineError>;

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

    /// Refuses new logins for the role.
    async fn disable_login(&self, username: &str) -> Result<(), EngineError>;

    /// Ends every session of the role; returns how many.
    async fn terminate_sessions(&self, username: &str) -> Result<u64, EngineError>;

    /// Drops a login role after handing its objects to the scoped role. A role
    /// that does not exist is not an error.
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
}

/// Where applications connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub engine: &'static str,
    pub host: String,
    pub port: u16,
    pub dbname: String,
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

fn build_one(db: &Database) -> Result<Arc<dyn Engine>, EngineError> {
    match db.engine {
        EngineKind::Postgres => Ok(Arc::new(postgres::Postgres::new(db)?)),
    }
}
