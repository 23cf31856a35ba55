//! The Vault / OpenBao store: one KV version 2 secret per account at `path` under
//! the configured mount. Each rotation writes a new version with check-and-set, so
//! two writers never silently overwrite each other, and sets the secret's
//! `custom_metadata` (account, version, expires_at). Single-phase: a publish is
//! what readers get at once.
//!
//! Authentication (token, AppRole, Kubernetes) happens on first use. The token
//! is renewed when half of its TTL has passed (checked before each use: the store
//! is only used at rotation time, and a background renewal task would need an
//! owner); when renewal fails or the token expired, credrotd logs in again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Mutex;
use tracing::{debug, warn};
use vaultrs::api::kv2::requests::{SetSecretMetadataRequest, SetSecretRequestOptions};
use vaultrs::client::{Client, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use vaultrs::{auth, kv2, token};

use super::{Held, Incoming, Publication, Store, StoreError, Undo};
use crate::inventory::{VaultAuth, VaultConfig};
use crate::secret::Secret;

/// How long one HTTP request to Vault may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How many KV versions before the latest [`Store::fetch`] looks through for
/// one credential version.
const HISTORY: u64 = 10;

pub struct VaultStore {
    name: String,
    config: VaultConfig,
    session: Mutex<Option<Session>>,
}

/// A logged-in client.
struct Session {
    client: Arc<VaultClient>,
    /// When to renew; `None` for a token that never expires (e.g. a root token).
    renew_at: Option<Instant>,
    expires_at: Option<Instant>,
    renewable: bool,
}

/// Only the `version` key of a payload, so that reading it back does not copy
/// the password into an unzeroized string.
#[derive(serde::Deserialize)]
struct VersionOnly {
    version: i64,
}

fn is_status(e: &ClientError, status: u16) -> bool {
    match e {
        ClientError::APIError { code, .. } => *code == status,
        // A soft-deleted latest version answers 404 with a body but no `errors`.
        ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError { code, .. },
        } => *code == status,
        _ => false,
    }
}

/// The reason in an error: Vault's own message, or the transport error chain.
fn reason(e: &ClientError) -> String {
    match e {
        ClientError::APIError { code, errors } => {
            let detail = if errors.is_empty() {
                "no details".to_owned()
            } else {
                errors.join("; ")
            };
            match code {
                403 => format!("permission denied (HTTP 403: {detail}); the token may be expired, revoked or lack a policy for this path"),
                _ => format!("HTTP {code}: {detail}"),
            }
        }
        other => {
            let mut out = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(s) = src {
                out.push_str(": ");
                out.push_str(&s.to_string());
                src = s.source();
            }
            out
        }
    }
}

impl VaultStore {
    pub fn new(name: &str, config: VaultConfig) -> Self {
        super::install_crypto();
        VaultStore {
            name: name.to_owned(),
            config,
            session: Mutex::new(None),
        }
    }

    fn full(&self, path: &str) -> String {
        format!("{}/{}", self.config.mount, path)
    }

    fn remote(&self, op: &'static str, path: &str, e: ClientError) -> StoreError {
        StoreError::Remote {
            store: self.name.clone(),
            op,
            path: self.full(path),
            reason: reason(&e),
            source: Some(Box::new(e)),
        }
    }

    fn auth_err(&self, reason: String) -> StoreError {
        StoreError::Auth {
            store: self.name.clone(),
            method: self.config.auth.method(),
            reason,
        }
    }

    fn new_client(&self, token: &Secret) -> Result<VaultClient, StoreError> {
        let mut b = VaultClientSettingsBuilder::default();
        // The inventory checked that the address parses as a URL, so the
        // builder's address setter (which panics on a bad URL) cannot panic.
        b.address(&self.config.address)
            .token(token.expose())
            .timeout(Some(REQUEST_TIMEOUT))
            .verify(true)
            .namespace(self.config.namespace.clone());
        if let Some(ca) = &self.config.ca_file {
            b.ca_certs(vec![ca.display().to_string()]);
        } else {
            b.ca_certs(Vec::new());
        }
        let settings = b
            .build()
            .map_err(|e| self.auth_err(format!("invalid client settings: {e}")))?;
        VaultClient::new(settings).map_err(|e| self.auth_err(reason(&e)))
    }

    /// Logs in with the configured method.
    async fn login(&self) -> Result<Session, StoreError> {
        let read = |what: &str, r: std::io::Result<Secret>| {
            r.map_err(|e| self.auth_err(format!("cannot read the {what}: {e}")))
        };
        let now = Instant::now();
        let (client, ttl, renewable) = match &self.config.auth {
            VaultAuth::Token(source) => {
                let tok = read("token", source.read())?;
                let client = self.new_client(&tok)?;
                let info = token::lookup_self(&client)
                    .await
                    .map_err(|e| self.auth_err(reason(&e)))?;
                (client, info.ttl, info.renewable.unwrap_or(false))
            }
            VaultAuth::AppRole {
                role_id,
                secret_id_file,
                mount,
            } => {
                let role_id = read("role id", role_id.read())?;
                let secret_id = read(
                    "secret id",
                    crate::inventory::TokenSource::File(secret_id_file.clone()).read(),
                )?;
                let mut client = self.new_client(&Secret::new(String::new()))?;
                let info =
                    auth::approle::login(&client, mount, role_id.expose(), secret_id.expose())
                        .await
                        .map_err(|e| self.auth_err(reason(&e)))?;
                let tok = Secret::new(info.client_token);
                client.set_token(tok.expose());
                (client, info.lease_duration, info.renewable)
            }
            VaultAuth::Kubernetes {
                role,
                jwt_file,
                mount,
            } => {
                let jwt = read(
                    "service account token",
                    crate::inventory::TokenSource::File(jwt_file.clone()).read(),
                )?;
                let mut client = self.new_client(&Secret::new(String::new()))?;
                let info = auth::kubernetes::login(&client, mount, role, jwt.expose())
                    .await
                    .map_err(|e| self.auth_err(reason(&e)))?;
                let tok = Secret::new(info.client_token);
                client.set_token(tok.expose());
                (client, info.lease_duration, info.renewable)
            }
        };
        debug!(store = %self.name, method = self.config.auth.method(), ttl, renewable, "logged in to Vault");
        Ok(Session {
            client: Arc::new(client),
            renew_at: (ttl > 0).then(|| now + Duration::from_secs(ttl / 2)),
            expires_at: (ttl > 0).then(|| now + Duration::from_secs(ttl)),
            renewable,
        })
    }

    /// A client with a live token: logs in on first use, renews the token once
    /// half its TTL has passed, and logs in again when renewal is impossible.
    async fn client(&self) -> Result<Arc<VaultClient>, StoreError> {
        let mut guard = self.session.lock().await;
        let now = Instant::now();
        if let Some(s) = guard.as_mut() {
            match s.renew_at {
                None => return Ok(s.client.clone()),
                Some(t) if now < t => return Ok(s.client.clone()),
                Some(_) => {}
            }
            if s.renewable && s.expires_at.is_some_and(|e| now < e) {
                match token::renew_self(s.client.as_ref(), None).await {
                    Ok(info) if info.lease_duration > 0 => {
                        let ttl = Duration::from_secs(info.lease_duration);
                        s.renew_at = Some(now + ttl / 2);
                        s.expires_at = Some(now + ttl);
                        s.renewable = info.renewable;
                        debug!(store = %self.name, ttl = info.lease_duration, "renewed Vault token");
                        return Ok(s.client.clone());
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(store = %self.name, reason = %reason(&e), "cannot renew the Vault token; logging in again")
                    }
                }
            }
        }
        let session = self.login().await?;
        let client = session.client.clone();
        *guard = Some(session);
        Ok(client)
    }

    /// Forgets the session after a 403, so that the next use logs in again (an
    /// AppRole or Kubernetes login gets a fresh token; a token file may have been
    /// replaced).
    async fn on_error(&self, e: &ClientError) {
        if is_status(e, 403) {
            *self.session.lock().await = None;
        }
    }

    async fn read_metadata(
        &self,
        client: &VaultClient,
        path: &str,
    ) -> Result<Option<vaultrs::api::kv2::responses::ReadSecretMetadataResponse>, StoreError> {
        match kv2::read_metadata(client, &self.config.mount, path).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => {
                self.on_error(&e).await;
                Err(self.remote("read metadata of", path, e))
            }
        }
    }

    /// Writes `data` as a new version, expecting `cas` to be the current one.
    async fn write(
        &self,
        client: &VaultClient,
        path: &str,
        data: &serde_json::Value,
        cas: u64,
    ) -> Result<u64, StoreError> {
        let options = SetSecretRequestOptions {
            cas: u32::try_from(cas).unwrap_or(u32::MAX),
        };
        match kv2::set_with_options(client, &self.config.mount, path, data, options).await {
            Ok(meta) => Ok(meta.version),
            Err(ClientError::APIError { code: 400, errors })
                if errors.iter().any(|m| m.contains("check-and-set")) =>
            {
                Err(StoreError::Conflict {
                    store: self.name.clone(),
                    path: self.full(path),
                    expected: cas,
                })
            }
            Err(e) => {
                self.on_error(&e).await;
                Err(self.remote("write", path, e))
            }
        }
    }

    /// Sets the secret's custom_metadata (replacing it; empty clears it).
    async fn set_custom_metadata(
        &self,
        client: &VaultClient,
        path: &str,
        meta: HashMap<String, String>,
    ) -> Result<(), StoreError> {
        let mut req = SetSecretMetadataRequest::builder();
        req.custom_metadata(meta);
        kv2::set_metadata(client, &self.config.mount, path, Some(&mut req))
            .await
            .map_err(|e| self.remote("set custom_metadata of", path, e))
    }

    fn metadata_of(doc: &serde_json::Value) -> HashMap<String, String> {
        let mut m = HashMap::new();
        for key in ["account", "version", "expires_at"] {
            match &doc[key] {
                serde_json::Value::String(s) => {
                    m.insert(key.to_owned(), s.clone());
                }
                serde_json::Value::Number(n) => {
                    m.insert(key.to_owned(), n.to_string());
                }
                _ => {}
            }
        }
        m
    }

    /// Puts back the version before `written`, or deletes `written` if there was
    /// none. Refuses (conflict) when someone wrote after us.
    async fn undo_write(&self, path: &str, written: u64) -> Result<(), StoreError> {
        let client = self.client().await?;
        let meta = self.read_metadata(&client, path).await?;
        let Some(meta) = meta else { return Ok(()) };
        if meta.current_version != written {
            return Err(StoreError::Conflict {
                store: self.name.clone(),
                path: self.full(path),
                expected: written,
            });
        }
        let prev = written.saturating_sub(1);
        let prev_live = prev >= 1
            && meta
                .versions
                .get(&prev.to_string())
                .is_some_and(|v| !v.destroyed && v.deletion_time.is_empty());
        if prev_live {
            // The previous document comes from Vault's own history, so it never
            // had to be kept in credrotd's memory.
            let doc: serde_json::Value =
                kv2::read_version(client.as_ref(), &self.config.mount, path, prev)
                    .await
                    .map_err(|e| self.remote("read the previous version of", path, e))?;
            self.write(&client, path, &doc, written).await?;
            self.set_custom_metadata(&client, path, Self::metadata_of(&doc))
                .await?;
        } else {
            kv2::delete_versions(client.as_ref(), &self.config.mount, path, vec![written])
                .await
                .map_err(|e| self.remote("delete the new version of", path, e))?;
            self.set_custom_metadata(&client, path, HashMap::new())
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Store for VaultStore {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, publication: &Publication<'_>) -> Result<Undo, StoreError> {
        let path = publication.path;
        let client = self.client().await?;
        let meta = self.read_metadata(&client, path).await?;
        let current = meta.as_ref().map_or(0, |m| m.current_version);
        let undo = |written| Undo {
            account: publication.account.to_owned(),
            path: path.to_owned(),
            version: publication.version,
            previous: None,
            written,
            created_secret: false,
            unchanged: written.is_none(),
        };
        if current > 0 {
            if let Some(v) = self.read_version_field(&client, path).await? {
                if v == publication.version {
                    // Already published (a retried step): nothing to write or undo.
                    return Ok(undo(None));
                }
            }
        }
        let body = publication.to_json();
        // vaultrs takes a serde value; the copy lives only for this request.
        let data: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| StoreError::Remote {
                store: self.name.clone(),
                op: "encode the payload for",
                path: self.full(path),
                reason: "invalid JSON".into(),
                source: Some(Box::new(e)),
            })?;
        let written = self.write(&client, path, &data, current).await?;
        drop(data);
        let mut meta = HashMap::new();
        meta.insert("account".to_owned(), publication.account.to_owned());
        meta.insert("version".to_owned(), publication.version.to_string());
        meta.insert(
            "expires_at".to_owned(),
            publication
                .expires_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        if let Err(e) = self.set_custom_metadata(&client, path, meta).await {
            // Take our own write back, so that a failed publish leaves nothing.
            if let Err(undo_err) = self.undo_write(path, written).await {
                warn!(store = %self.name, path = %self.full(path), error = %undo_err, "cannot take back a version whose metadata could not be set");
            }
            return Err(e);
        }
        Ok(undo(Some(written)))
    }

    async fn revert(&self, undo: Undo) -> Result<(), StoreError> {
        match undo.written {
            Some(written) => self.undo_write(&undo.path, written).await,
            None => Ok(()),
        }
    }

    async fn current_version(&self, _account: &str, path: &str) -> Result<Option<i64>, StoreError> {
        let client = self.client().await?;
        self.read_version_field(&client, path).await
    }

    async fn fetch(
        &self,
        account: &str,
        path: &str,
        version: Option<i64>,
    ) -> Result<Option<Held>, StoreError> {
        let client = self.client().await?;
        // What readers get: the latest version (nothing if it is deleted).
        let latest = self.read_held(&client, account, path, None).await?;
        let wanted = match (version, latest) {
            (None, latest) => return Ok(latest),
            (Some(v), Some(h)) if h.version == v => return Ok(Some(h)),
            (Some(v), _) => v,
        };
        // An older credential version: look back through the KV history.
        let Some(meta) = self.read_metadata(&client, path).await? else {
            return Ok(None);
        };
        let newest = meta.current_version;
        for n in (newest.saturating_sub(HISTORY).max(1)..newest).rev() {
            let live = meta
                .versions
                .get(&n.to_string())
                .is_some_and(|m| !m.destroyed && m.deletion_time.is_empty());
            if !live {
                continue;
            }
            if let Some(h) = self.read_held(&client, account, path, Some(n)).await? {
                if h.version == wanted {
                    return Ok(Some(h));
                }
            }
        }
        Ok(None)
    }

    async fn check(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        token::lookup_self(client.as_ref())
            .await
            .map(|_| ())
            .map_err(|e| self.auth_err(reason(&e)))
    }
}

impl VaultStore {
    /// The credential in KV version `kv_version` (the latest when `None`);
    /// `None` when there is no such version, it is deleted, or it is not
    /// credrotd's (a warning for the latest, never its content).
    async fn read_held(
        &self,
        client: &VaultClient,
        account: &str,
        path: &str,
        kv_version: Option<u64>,
    ) -> Result<Option<Held>, StoreError> {
        let mount = &self.config.mount;
        // vaultrs hands the data over as a JSON value that `Incoming` takes the
        // password out of by move, into a `Secret`.
        let r = match kv_version {
            None => kv2::read::<Incoming>(client, mount, path).await,
            Some(n) => kv2::read_version::<Incoming>(client, mount, path, n).await,
        };
        let foreign = || {
            if kv_version.is_none() {
                super::warn_foreign(&self.name, &self.full(path));
            } else {
                debug!(store = %self.name, path = %self.full(path), kv_version, "an older KV version is not a credrotd credential");
            }
        };
        match r {
            Ok(doc) => {
                let held = doc.into_held(account);
                if held.is_none() {
                    foreign();
                }
                Ok(held)
            }
            Err(e) if is_status(&e, 404) => Ok(None),
            // The parser's message may quote the document: never shown.
            Err(ClientError::JsonParseError { .. }) => {
                foreign();
                Ok(None)
            }
            Err(e) => {
                self.on_error(&e).await;
                Err(self.remote("read", path, e))
            }
        }
    }

    /// The credrotd `version` in the latest version's data; `None` when there is
    /// no secret, the latest version is deleted, or it is not credrotd's.
    async fn read_version_field(
        &self,
        client: &VaultClient,
        path: &str,
    ) -> Result<Option<i64>, StoreError> {
        match kv2::read::<VersionOnly>(client, &self.config.mount, path).await {
            Ok(doc) => Ok(Some(doc.version)),
            Err(e) if is_status(&e, 404) => Ok(None),
            // A document without credrotd's `version` is not ours.
            Err(ClientError::JsonParseError { .. }) => Ok(None),
            Err(e) => {
                self.on_error(&e).await;
                Err(self.remote("read", path, e))
            }
        }
    }
}
