//! Secret stores and the secret payload. A [`Store`] publishes one JSON document
//! per account and can tell which credential version it holds, so that start-up
//! recovery can tell a half-published rotation from a finished one.

pub mod file;

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
}

impl StoreError {
    /// The store the error concerns.
    pub fn store(&self) -> &str {
        match self {
            StoreError::Write { store, .. } | StoreError::Read { store, .. } => store,
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
    /// The previous document, or `None` if there was none.
    pub previous: Option<Zeroizing<Vec<u8>>>,
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

    /// Checks that the store is reachable and writable (for `plan`).
    async fn check(&self) -> Result<(), StoreError>;
}

/// Stores by name.
pub type Stores = BTreeMap<String, Arc<dyn Store>>;

/// Builds every store of the inventory. No IO.
pub fn build(inventory: &Inventory) -> Stores {
    inventory
        .stores
        .values()
        .map(|s| {
            let store: Arc<dyn Store> = match &s.kind {
                StoreKind::File { dir, mode } => {
                    Arc::new(file::FileStore::new(&s.name, dir.clone(), *mode))
                }
            };
            (s.name.clone(), store)
        })
        .collect()
}
