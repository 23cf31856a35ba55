//! Secret stores and the secret payload. A [`Store`] publishes one JSON document
//! per account and can tell which credential version it holds, so that start-up
//! recovery can tell a half-published rotation from a finished one.
//!
//! [`Store::fetch`] reads a credential back ([`Held`]): what readers get now, or
//! one credential version if the store still has it (also when it is only
//! staged), so that recovery can finish a half-done publish from a store that
//! holds the credential and a lost ledger can be rebuilt from the stores.
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
use serde::{Deserialize, Deserializer, Serialize};
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

/// A credential read back from a store ([`Store::fetch`]), parsed from the
/// payload. `Debug` never shows the password; the password is zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Held {
    /// credrotd's credential version (the payload's `version`).
    pub version: i64,
    pub username: String,
    pub password: Secret,
    /// The payload's `issued_at` / `expires_at` (RFC 3339); `None` when absent
    /// or not a timestamp.
    pub issued_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("version", &self.version)
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Held {
    /// Parses a published document (the [`Payload`] keys) of `account`. `None`
    /// when it is not credrotd's: not JSON, `version`, `username` or `password`
    /// missing or of another type, or an `account` key naming another account.
    /// The password goes straight from the parser into a [`Secret`]; nothing
    /// else keeps a copy (serde_json's scratch buffer is only used for strings
    /// with escapes, which generated passwords never have).
    pub fn from_payload(doc: &[u8], account: &str) -> Option<Held> {
        serde_json::from_slice::<Incoming>(doc)
            .ok()?
            .into_held(account)
    }
}

/// A payload as read back: only the keys credrotd needs, the password held as a
/// [`Secret`] from the moment it is parsed (other keys, `url` included, are
/// skipped without being kept).
#[derive(Deserialize)]
pub(crate) struct Incoming {
    version: i64,
    username: String,
    #[serde(deserialize_with = "secret_string")]
    password: Secret,
    #[serde(default)]
    account: Option<String>,
    #[serde(default)]
    issued_at: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
}

impl Incoming {
    /// `None` when the document names another account.
    pub(crate) fn into_held(self, account: &str) -> Option<Held> {
        if self.account.as_deref().is_some_and(|a| a != account) {
            return None;
        }
        let time = |t: Option<String>| {
            t.and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        Some(Held {
            version: self.version,
            username: self.username,
            password: self.password,
            issued_at: time(self.issued_at),
            expires_at: time(self.expires_at),
        })
    }
}

/// Deserializes a string straight into a [`Secret`]: an owned string from the
/// deserializer is moved in, a borrowed one copied once into the secret.
fn secret_string<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Secret;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
            Ok(Secret::new(v.to_owned()))
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
            Ok(Secret::new(v))
        }
    }
    d.deserialize_string(V)
}

/// `held` if it is the version asked for (any version when `None`).
fn held_if(held: Held, version: Option<i64>) -> Option<Held> {
    version.is_none_or(|v| v == held.version).then_some(held)
}

/// Logs a document at `path` that is not a credrotd payload (never its content).
pub(crate) fn warn_foreign(store: &str, path: &str) {
    tracing::warn!(
        store = %store,
        path = %path,
        "the secret is not a credrotd credential (not JSON, keys missing or another account's); ignoring it"
    );
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
            "{}://{}:{}@{}:{}/{}",
            self.endpoint.url_scheme(),
            encode(self.username),
            encode(self.password.expose()),
            host_in_url(&self.endpoint.host),
            self.endpoint.port,
            encode(&self.endpoint.dbname)
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

/// Percent-encodes a URL's user, password or path segment (generated
/// passwords are alphanumeric; a static role or database name may not be).
fn encode(s: &str) -> percent_encoding::PercentEncode<'_> {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'_')
        .remove(b'-')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, KEEP)
}

/// An IPv6 literal goes in brackets.
fn host_in_url(host: &str) -> std::borrow::Cow<'_, str> {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]").into()
    } else {
        host.into()
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
    /// The publish created the secret itself (AWS: `CreateSecret` succeeded in
    /// this very publish). Only then may a revert delete the secret.
    pub created_secret: bool,
    /// The publish found the version already in place and changed nothing (a
    /// retried step after the promote): the revert has nothing to put back.
    pub unchanged: bool,
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
            .field("created_secret", &self.created_secret)
            .field("unchanged", &self.unchanged)
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

    /// Reads a credential back.
    ///
    /// - `version: None`: what readers get now (file: the file; Vault: the
    ///   latest KV version, `None` if it is deleted; AWS: `AWSCURRENT`). One
    ///   request, so `fetch(.., None)?.map(|h| h.version)` answers "which
    ///   credential does this store serve?".
    /// - `version: Some(v)`: credential version `v` if the store still has it,
    ///   even if only staged (file: only if the file holds `v`; Vault: the
    ///   latest or one of the 10 KV versions before it that is not deleted; AWS:
    ///   the version whose `ClientRequestToken` was derived for `v`, or another
    ///   version with a staging label whose payload says `v`; a version that
    ///   lost all its labels, e.g. after a revert, is not held).
    ///
    /// `Ok(None)` when there is no such secret or version, or the document is
    /// not credrotd's (logged as a warning naming store and path, never the
    /// content). Errors name the store and the path, never the value.
    async fn fetch(
        &self,
        account: &str,
        path: &str,
        version: Option<i64>,
    ) -> Result<Option<Held>, StoreError>;

    /// Checks that the store is reachable and its credentials work (for `plan`).
    async fn check(&self) -> Result<(), StoreError>;

    /// Second phase of two-phase stores: makes the version that `publish` staged
    /// the one readers get. Called only after every store of the account holds
    /// it; idempotent. Single-phase stores (file, Vault) have nothing to do.
    async fn promote(&self, _account: &str, _path: &str, _version: i64) -> Result<(), StoreError> {
        Ok(())
    }

    /// Drops a version that was staged but never promoted (recovery of a rotation
    /// that a crash cut short), so that no `AWSPENDING` dangles; if it became
    /// what readers get, the previous version is made current again. Never
    /// deletes a secret. Idempotent. An error means the store may still serve
    /// the version (AWS: it is the secret's only `AWSCURRENT` and there is no
    /// previous version to move it back to), so its login must stay alive.
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn doc(account: &str, password: &Secret) -> Zeroizing<Vec<u8>> {
        let endpoint = Endpoint {
            engine: "postgres",
            host: "db".into(),
            port: 5432,
            dbname: "orders".into(),
        };
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        Publication {
            account,
            path: "p",
            version: 9,
            username: "etl_a",
            password,
            endpoint: &endpoint,
            issued_at: at,
            expires_at: at + chrono::Duration::hours(1),
        }
        .to_json()
    }

    /// The payload's `url` has the engine's scheme (MySQL and MariaDB
    /// drivers take `mysql://`) and encodes what needs it.
    #[test]
    fn the_payload_url_has_the_engines_scheme_and_is_encoded() {
        let pw = Secret::new("Abc123".into());
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let url_of = |engine: &'static str, username: &str, host: &str, dbname: &str| {
            let endpoint = Endpoint {
                engine,
                host: host.into(),
                port: 3306,
                dbname: dbname.into(),
            };
            let doc = Publication {
                account: "a",
                path: "p",
                version: 1,
                username,
                password: &pw,
                endpoint: &endpoint,
                issued_at: at,
                expires_at: at,
            }
            .to_json();
            let v: serde_json::Value = serde_json::from_slice(&doc).unwrap();
            v["url"].as_str().unwrap().to_owned()
        };
        assert_eq!(
            url_of("postgres", "etl_a", "db", "orders"),
            "postgres://etl_a:Abc123@db:3306/orders"
        );
        assert_eq!(
            url_of("mysql", "etl_a", "db", "shop"),
            "mysql://etl_a:Abc123@db:3306/shop"
        );
        assert_eq!(
            url_of("mariadb", "etl_a", "db", "shop"),
            "mysql://etl_a:Abc123@db:3306/shop"
        );
        assert_eq!(
            url_of("postgres", "legacy app@x", "::1", "my db"),
            "postgres://legacy%20app%40x:Abc123@[::1]:3306/my%20db"
        );
    }

    #[test]
    fn a_published_document_reads_back_and_debug_redacts() {
        let pw = Secret::generate();
        let held = Held::from_payload(&doc("etl", &pw), "etl").expect("ours");
        assert_eq!(held.version, 9);
        assert_eq!(held.username, "etl_a");
        assert_eq!(held.password, pw);
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(held.issued_at, Some(at));
        assert_eq!(held.expires_at, Some(at + chrono::Duration::hours(1)));
        let debug = format!("{held:?}");
        assert!(!debug.contains(pw.expose()) && debug.contains("[redacted]"));
        // Another account's document is not ours.
        assert!(Held::from_payload(&doc("other", &pw), "etl").is_none());
    }

    #[test]
    fn foreign_documents_are_none() {
        for doc in [
            &b"not json"[..],
            b"{}",
            b"[1, 2]",
            br#"{"username": "u", "password": "p"}"#,
            br#"{"version": "9", "username": "u", "password": "p"}"#,
            br#"{"version": 9, "username": "u", "password": 42}"#,
        ] {
            assert!(
                Held::from_payload(doc, "etl").is_none(),
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
        // Optional keys may be missing or odd; escapes in the password parse.
        let h = Held::from_payload(
            br#"{"version": 1, "username": "u", "password": "a\"b", "issued_at": "soon"}"#,
            "etl",
        )
        .unwrap();
        assert_eq!(h.password.expose(), "a\"b");
        assert_eq!((h.issued_at, h.expires_at), (None, None));
    }
}
