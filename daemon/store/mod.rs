//! Secret stores and the secret payload. A [`Store`] publishes one JSON document
//! per account and can tell which credential version it holds, so that start-up
//! recovery can tell a half-published rotation from a finished one.
//!
//! Stores are single-phase (file, Vault: a publish is what readers get at once) or
//! two-phase (AWS Secrets Manager: a publish stages the new version as
//! `AWSPENDING`, and [`Store::promote`] makes it `AWSCURRENT`). The saga publishes
//! to every store of an account first and promotes only when all of them hold it.

pub mod aws;
pub mod file;
pub mod vault;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::engine::Endpoint;
use crate::inventory::{Inventory, StoreKind};
use crate::secret::Secret;

/// Errors from a secret store. They name the store and the path, never the value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {store}: cannot write {path}: {source}")]
    Write {
        store: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store {store}: cannot read {path}: {source}")]
    Read {
        store: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A remote store (Vault, AWS) refused or could not be reached. `reason` is the
    /// server's answer or the transport error, never the payload.
    #[error("store {store}: cannot {op} {path}: {reason}")]
    Remote {
        store: String,
        op: &'static str,
        path: String,
        reason: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Check-and-set refused the write: someone else wrote the path since we read it.
    #[error("store {store}: {path} changed under us (check-and-set expected version {expected}); another writer is active")]
    Conflict {
        store: String,
        path: String,
        expected: u64,
    },
    /// The store's own credentials do not work.
    #[error("store {store}: cannot authenticate with {method}: {reason}")]
    Auth {
        store: String,
        method: &'static str,
        reason: String,
    },
}

impl StoreError {
    /// The store the error concerns (for the metrics).
    pub fn store(&self) -> &str {
        match self {
            StoreError::Write { store, .. }
            | StoreError::Read { store, .. }
            | StoreError::Remote { store, .. }
            | StoreError::Conflict { store, .. }
            | StoreError::Auth { store, .. } => store,
        }
    }
}

/// The document published for an account: the keys AWS uses for RDS secrets, so
/// existing tools read it, plus credrotd's own.
#[derive(Serialize)]
pub struct Payload<'a> {
    pub engine: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub dbname: &'a str,
    pub username: &'a str,
    pub password: &'a str,
    pub url: &'a str,
    pub account: &'a str,
    pub version: i64,
    pub issued_at: String,
    pub expires_at: String,
}

/// Everything a store needs to publish one credential.
pub struct Publication<'a> {
    pub account: &'a str,
    /// The account's path in path-based stores (Vault, AWS).
    pub path: &'a str,
    pub version: i64,
    pub username: &'a str,
    pub password: &'a Secret,
    pub endpoint: &'a Endpoint,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Publication<'_> {
    /// The JSON document, in a buffer that is wiped on drop.
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let url = Zeroizing::new(format!(
            "postgres://{}:{}@{}:{}/{}",
            self.username,
            self.password.expose(),
            self.endpoint.host,
            self.endpoint.port,
            self.endpoint.dbname
        ));
        let payload = Payload {
            engine: self.endpoint.engine,
            host: &self.endpoint.host,
            port: self.endpoint.port,
            dbname: &self.endpoint.dbname,
            username: self.username,
            password: self.password.expose(),
            url: &url,
            account: self.account,
            version: self.version,
            issued_at: self.issued_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            expires_at: self.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        };
        let mut out = Zeroizing::new(Vec::with_capacity(512));
        // Serializing plain strings and integers into a Vec cannot fail.
        let _ = serde_json::to_writer_pretty(&mut *out, &payload);
        out.push(b'\n');
        out
    }
}

/// What a store held before a publish, so that it can be put back when another
/// store of the same account refuses the new credential.
pub struct Undo {
    pub account: String,
    pub path: String,
    /// The credential version that was published.
    pub version: i64,
    /// The previous document, or `None` if there was none (file store; stores
    /// with a version history read it back from there instead).
    pub previous: Option<Zeroizing<Vec<u8>>>,
    /// The store-side version the publish created (Vault's KV version), or `None`
    /// when the publish changed nothing or the store does not number versions.
    pub written: Option<u64>,
}

impl std::fmt::Debug for Undo {
    /// Never shows the previous document: it holds a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Undo")
            .field("account", &self.account)
            .field("path", &self.path)
            .field("version", &self.version)
            .field("previous", &self.previous.as_ref().map(|_| "[redacted]"))
            .field("written", &self.written)
            .finish()
    }
}

/// A secret store.
#[async_trait]
pub trait Store: Send + Sync {
    /// The store's name in the inventory.
    fn name(&self) -> &str;

    /// Makes `publication` the account's current secret in this store. Publishing
    /// the same version twice is a no-op. Returns what to put back on rollback.
    async fn publish(&self, publication: &Publication<'_>) -> Result<Undo, StoreError>;

    /// Puts back what the store held before a publish.
    async fn revert(&self, undo: Undo) -> Result<(), StoreError>;

    /// The credential version the store currently holds for the account, if any.
    async fn current_version(&self, account: &str, path: &str) -> Result<Option<i64>, StoreError>;

    /// Checks that the store is reachable and its credentials work (for `plan`).
    async fn check(&self) -> Result<(), StoreError>;

    /// Second phase of two-phase stores: makes the version that `publish` staged
    /// the one readers get. Called only after every store of the account holds
    /// it; idempotent. Single-phase stores (file, Vault) have nothing to do.
    async fn promote(&self, _account: &str, _path: &str, _version: i64) -> Result<(), StoreError> {
        Ok(())
    }

    /// Drops a version that was staged but never promoted (recovery of a rotation
    /// that a crash cut short), so that no `AWSPENDING` dangles. Idempotent.
    async fn discard(&self, _account: &str, _path: &str, _version: i64) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether `publish` only stages (true) and `promote` makes it visible.
    fn two_phase(&self) -> bool {
        false
    }
}

/// reqwest (Vault) and the AWS SDK use rustls; picks its ring provider for the
/// process once (an error only means that one is installed already).
fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Stores by name.
pub type Stores = BTreeMap<String, Arc<dyn Store>>;

/// Builds every store of the inventory. No IO: remote stores connect and
/// authenticate on first use.
pub fn build(inventory: &Inventory) -> Stores {
    inventory
        .stores
        .values()
        .map(|s| {
            let store: Arc<dyn Store> = match &s.kind {
                StoreKind::File { dir, mode } => {
                    Arc::new(file::FileStore::new(&s.name, dir.clone(), *mode))
                }
                StoreKind::Vault(config) => {
                    Arc::new(vault::VaultStore::new(&s.name, config.clone()))
                }
                StoreKind::Aws(config) => Arc::new(aws::AwsStore::new(&s.name, config.clone())),
            };
            (s.name.clone(), store)
        })
        .collect()
}
