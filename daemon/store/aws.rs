//! The AWS Secrets Manager store, following AWS's own rotation protocol: the
//! secret named by the account's `path` is created if absent; a publish is
//! `PutSecretValue` staged `AWSPENDING`, with a `ClientRequestToken` derived from
//! account, path and credential version (so a retried write is a no-op); once
//! every store of the account holds the credential, [`Store::promote`] moves
//! `AWSCURRENT` to it (AWS then labels the old one `AWSPREVIOUS`) and removes
//! `AWSPENDING`. A revert or a discard removes `AWSPENDING` (and moves
//! `AWSCURRENT` back if it had moved), so no pending version dangles.
//!
//! AWS makes the first version of a secret `AWSCURRENT` by itself, and
//! `AWSCURRENT` can only be moved, never removed. A revert deletes the secret
//! only when this very publish created it and it holds no other version (then
//! without a recovery window: the secret only ever held the unpromoted
//! credential, and a recovery window would block the name, and so every later
//! publish, for at least 7 days). A secret that existed before, created by
//! anyone, is never deleted: the revert removes the version's staging labels,
//! and when `AWSCURRENT` has nowhere to go back to it says so with an error (the
//! store then still serves the version, so its login must stay alive).
//!
//! Credentials come from the SDK's default chain (environment, profile, web
//! identity, instance metadata). The client is built on first use.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_secretsmanager::error::{DisplayErrorContext, SdkError};
use aws_sdk_secretsmanager::Client;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use super::{Held, Incoming, Publication, Store, StoreError, Undo};
use crate::inventory::AwsConfig;

const CURRENT: &str = "AWSCURRENT";
const PENDING: &str = "AWSPENDING";
const PREVIOUS: &str = "AWSPREVIOUS";

/// How many labelled versions [`Store::fetch`] reads when looking for a
/// credential version that is not under its own request token.
const SCAN: usize = 10;

pub struct AwsStore {
    name: String,
    config: AwsConfig,
    client: OnceCell<Client>,
}

/// The `ClientRequestToken` (and so the AWS version id) of one credential version:
/// UUID-shaped, derived from account, path and version, so that a retried publish
/// of the same version is recognised by AWS as the same request.
pub fn request_token(account: &str, path: &str, version: i64) -> String {
    let mut h = Sha256::new();
    for part in [account.as_bytes(), path.as_bytes(), &version.to_be_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let d = h.finalize();
    let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The error chain as text; AWS's messages name the secret, never its value.
fn reason<E, R>(e: &SdkError<E, R>) -> String
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    DisplayErrorContext(e).to_string()
}

type Stages = HashMap<String, Vec<String>>;

fn holder<'a>(stages: &'a Stages, stage: &str) -> Option<&'a str> {
    stages
        .iter()
        .find(|(_, s)| s.iter().any(|x| x == stage))
        .map(|(id, _)| id.as_str())
}

fn has(stages: &Stages, id: &str, stage: &str) -> bool {
    stages.get(id).is_some_and(|s| s.iter().any(|x| x == stage))
}

impl AwsStore {
    pub fn new(name: &str, config: AwsConfig) -> Self {
        super::install_crypto();
        AwsStore {
            name: name.to_owned(),
            config,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https();
                let mut loader = aws_config::defaults(BehaviorVersion::latest())
                    .region(Region::new(self.config.region.clone()))
                    .http_client(http)
                    .timeout_config(
                        TimeoutConfig::builder()
                            .connect_timeout(Duration::from_secs(5))
                            .operation_timeout(Duration::from_secs(60))
                            .build(),
                    );
                if let Some(e) = &self.config.endpoint {
                    loader = loader.endpoint_url(e);
                }
                // Keys taken out of the environment at start-up (`secret_env`)
                // are handed over here; otherwise the SDK's default chain.
                if let (Some(id), Some(secret)) = (
                    crate::secret_env::var("AWS_ACCESS_KEY_ID"),
                    crate::secret_env::var("AWS_SECRET_ACCESS_KEY"),
                ) {
                    if crate::secret_env::was_taken("AWS_SECRET_ACCESS_KEY") {
                        loader = loader.credentials_provider(
                            aws_sdk_secretsmanager::config::Credentials::new(
                                id.expose(),
                                secret.expose(),
                                crate::secret_env::var("AWS_SESSION_TOKEN")
                                    .map(|t| t.expose().to_owned()),
                                None,
                                "credrotd-environment",
                            ),
                        );
                    }
                }
                Client::new(&loader.load().await)
            })
            .await
    }

    fn remote<E, R>(&self, op: &'static str, path: &str, e: SdkError<E, R>) -> StoreError
    where
        E: std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        StoreError::Remote {
            store: self.name.clone(),
            op,
            path: path.to_owned(),
            reason: reason(&e),
            source: Some(Box::new(e)),
        }
    }

    /// The secret's version ids and their staging labels; `None` if it does not exist.
    async fn stages(&self, path: &str) -> Result<Option<Stages>, StoreError> {
        match self
            .client()
            .await
            .describe_secret()
            .secret_id(path)
            .send()
            .await
        {
            Ok(d) => Ok(Some(d.version_ids_to_stages().cloned().unwrap_or_default())),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.remote("describe", path, e)),
        }
    }

    /// Moves (or, with `to: None`, removes) a staging label.
    async fn move_stage(
        &self,
        path: &str,
        stage: &str,
        to: Option<&str>,
        from: Option<&str>,
    ) -> Result<(), StoreError> {
        self.client()
            .await
            .update_secret_version_stage()
            .secret_id(path)
            .version_stage(stage)
            .set_move_to_version_id(to.map(str::to_owned))
            .set_remove_from_version_id(from.map(str::to_owned))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.remote("move the staging label of", path, e))
    }

    /// Creates the (empty) secret. `true` if this call created it, `false` if it
    /// existed already (another replica was first).
    async fn create(&self, account: &str, path: &str) -> Result<bool, StoreError> {
        let r = self
            .client()
            .await
            .create_secret()
            .name(path)
            .description(format!(
                "credrotd: database credential of account {account}"
            ))
            .set_kms_key_id(self.config.kms_key_id.clone())
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            // Another replica created it first.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_exists_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.remote("create", path, e)),
        }
    }

    /// Every version id of the secret, labelled or not.
    async fn all_versions(&self, path: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = self
                .client()
                .await
                .list_secret_version_ids()
                .secret_id(path)
                .include_deprecated(true)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| self.remote("list the versions of", path, e))?;
            out.extend(
                page.versions()
                    .iter()
                    .filter_map(|v| v.version_id().map(str::to_owned)),
            );
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// Deletes a secret that this very publish created and that holds nothing
    /// but the unpromoted version `token` (see the module documentation for why
    /// without a recovery window). `false` (nothing deleted) when it holds any
    /// other version.
    async fn delete_created(&self, path: &str, token: &str) -> Result<bool, StoreError> {
        let versions = self.all_versions(path).await?;
        if versions.iter().any(|v| v != token) {
            return Ok(false);
        }
        self.delete_fresh(path).await?;
        Ok(true)
    }

    async fn delete_fresh(&self, path: &str) -> Result<(), StoreError> {
        self.client()
            .await
            .delete_secret()
            .secret_id(path)
            .force_delete_without_recovery(true)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.remote("delete the new secret", path, e))
    }

    /// Takes version `token` back out of what readers get: moves `AWSCURRENT`
    /// back to the `AWSPREVIOUS` version if `token` holds it, and removes
    /// `AWSPENDING` from it. Refuses (error, nothing changed) when `token` holds
    /// `AWSCURRENT` with no previous version to move it to.
    async fn unstage(
        &self,
        op: &'static str,
        path: &str,
        stages: &Stages,
        token: &str,
    ) -> Result<(), StoreError> {
        if has(stages, token, CURRENT) {
            match holder(stages, PREVIOUS).filter(|p| *p != token) {
                Some(prev) => {
                    let prev = prev.to_owned();
                    self.move_stage(path, CURRENT, Some(&prev), Some(token))
                        .await?
                }
                None => {
                    return Err(StoreError::Remote {
                        store: self.name.clone(),
                        op,
                        path: path.to_owned(),
                        reason: "the version is the secret's AWSCURRENT (AWS labels the first \
                                 version of a secret AWSCURRENT by itself) and no previous \
                                 version exists to move AWSCURRENT back to; credrotd deletes a \
                                 secret only when the same publish created it, so the secret is \
                                 left as it is and still serves this version"
                            .into(),
                        source: None,
                    });
                }
            }
        }
        self.drop_pending(path, stages, token).await
    }

    /// Reads one version (by id or staging label); `None` when the secret or
    /// the version does not exist. Also returns the version's staging labels.
    async fn read(
        &self,
        path: &str,
        id: Option<&str>,
        stage: Option<&str>,
    ) -> Result<Option<(Zeroizing<String>, Vec<String>)>, StoreError> {
        let r = self
            .client()
            .await
            .get_secret_value()
            .secret_id(path)
            .set_version_id(id.map(str::to_owned))
            .set_version_stage(stage.map(str::to_owned))
            .send()
            .await;
        match r {
            Ok(mut out) => {
                // Taken out of the response by move, into a buffer wiped on drop.
                let text = Zeroizing::new(out.secret_string.take().unwrap_or_default());
                let stages = out.version_stages.take().unwrap_or_default();
                Ok(Some((text, stages)))
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.remote("read", path, e)),
        }
    }

    /// Removes AWSPENDING from `id` if it carries it.
    async fn drop_pending(&self, path: &str, stages: &Stages, id: &str) -> Result<(), StoreError> {
        if has(stages, id, PENDING) {
            self.move_stage(path, PENDING, None, Some(id)).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Store for AwsStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn two_phase(&self) -> bool {
        true
    }

    async fn publish(&self, publication: &Publication<'_>) -> Result<Undo, StoreError> {
        let path = publication.path;
        let token = request_token(publication.account, path, publication.version);
        let mut undo = Undo {
            account: publication.account.to_owned(),
            path: path.to_owned(),
            version: publication.version,
            previous: None,
            written: None,
            created_secret: false,
            unchanged: false,
        };
        match self.stages(path).await? {
            // A retried step. Promoted already: staging it again would leave
            // AWSPENDING on the current version, and a revert must not take
            // the current credential away. Staged already as the secret's first
            // version (AWSCURRENT and AWSPENDING): nothing to write, but still
            // something to revert.
            Some(stages) if has(&stages, &token, CURRENT) => {
                undo.unchanged = !has(&stages, &token, PENDING);
                return Ok(undo);
            }
            Some(_) => {}
            None => undo.created_secret = self.create(publication.account, path).await?,
        }
        let body = publication.to_json();
        let text = Zeroizing::new(String::from_utf8_lossy(&body).into_owned());
        // The SDK takes an owned String for the request; that copy is dropped
        // with the request.
        let put = self
            .client()
            .await
            .put_secret_value()
            .secret_id(path)
            .client_request_token(&token)
            .secret_string(text.as_str())
            .version_stages(PENDING)
            .send()
            .await
            .map_err(|e| self.remote("put a new version into", path, e));
        if let Err(e) = put {
            // Leave no empty secret of ours behind: the next publish would not
            // know that credrotd created it.
            if undo.created_secret {
                if let Err(de) = self.delete_created(path, &token).await {
                    tracing::warn!(store = %self.name, path, error = %de, "cannot delete the secret created for a publish that failed");
                }
            }
            return Err(e);
        }
        Ok(undo)
    }

    async fn promote(&self, account: &str, path: &str, version: i64) -> Result<(), StoreError> {
        let token = request_token(account, path, version);
        let stages = self.stages(path).await?.unwrap_or_default();
        if !has(&stages, &token, CURRENT) {
            let old = holder(&stages, CURRENT).map(str::to_owned);
            self.move_stage(path, CURRENT, Some(&token), old.as_deref())
                .await?;
        }
        self.drop_pending(path, &stages, &token).await
    }

    async fn revert(&self, undo: Undo) -> Result<(), StoreError> {
        if undo.unchanged {
            // The publish found the version current already: nothing to undo.
            return Ok(());
        }
        let token = request_token(&undo.account, &undo.path, undo.version);
        // A secret this very publish created, holding nothing but this
        // unpromoted credential, goes again (AWSCURRENT, which AWS put on the
        // first version by itself, cannot be removed otherwise).
        if undo.created_secret && self.delete_created(&undo.path, &token).await? {
            return Ok(());
        }
        let Some(stages) = self.stages(&undo.path).await? else {
            return Ok(());
        };
        // Promoted already, or the first version of a secret that existed:
        // move AWSCURRENT back, and remove AWSPENDING.
        self.unstage("revert the new version of", &undo.path, &stages, &token)
            .await
    }

    async fn discard(&self, account: &str, path: &str, version: i64) -> Result<(), StoreError> {
        let token = request_token(account, path, version);
        match self.stages(path).await? {
            Some(stages) => {
                self.unstage("discard the new version of", path, &stages, &token)
                    .await
            }
            None => Ok(()),
        }
    }

    async fn fetch(
        &self,
        account: &str,
        path: &str,
        version: Option<i64>,
    ) -> Result<Option<Held>, StoreError> {
        let parse = |text: &str| {
            serde_json::from_str::<Incoming>(text)
                .ok()?
                .into_held(account)
        };
        let Some(v) = version else {
            // What readers get. Asks for AWSCURRENT by name: moto's default (no
            // stage) does not follow UpdateSecretVersionStage, real AWS's does.
            let Some((text, _)) = self.read(path, None, Some(CURRENT)).await? else {
                return Ok(None);
            };
            let held = parse(&text);
            if held.is_none() {
                super::warn_foreign(&self.name, path);
            }
            return Ok(held);
        };
        // The version credrotd wrote for `v` (one request), as long as it
        // carries a staging label: one that lost them all (reverted,
        // discarded, or two rotations old) is not served and may be removed
        // by AWS at any time.
        let token = request_token(account, path, v);
        if let Some((text, stages)) = self.read(path, Some(&token), None).await? {
            if !stages.is_empty() {
                match parse(&text) {
                    Some(h) if h.version == v => return Ok(Some(h)),
                    Some(_) => {}
                    None => super::warn_foreign(&self.name, path),
                }
            }
        }
        // Any other labelled version whose payload says `v` (e.g. written back
        // by hand or by another tool).
        let Some(stages) = self.stages(path).await? else {
            return Ok(None);
        };
        let mut ids: Vec<&String> = stages
            .iter()
            .filter(|(id, labels)| **id != token && !labels.is_empty())
            .map(|(id, _)| id)
            .collect();
        // AWSCURRENT first, then AWSPENDING, then the rest.
        ids.sort_by_key(|id| (!has(&stages, id, CURRENT), !has(&stages, id, PENDING)));
        for id in ids.into_iter().take(SCAN) {
            if let Some((text, stages)) = self.read(path, Some(id), None).await? {
                if stages.is_empty() {
                    continue;
                }
                if let Some(h) = parse(&text).filter(|h| h.version == v) {
                    return Ok(Some(h));
                }
            }
        }
        Ok(None)
    }

    async fn current_version(&self, _account: &str, path: &str) -> Result<Option<i64>, StoreError> {
        let r = self
            .client()
            .await
            .get_secret_value()
            .secret_id(path)
            .version_stage(CURRENT)
            .send()
            .await;
        match r {
            Ok(v) => {
                #[derive(serde::Deserialize)]
                struct VersionOnly {
                    version: i64,
                }
                Ok(v.secret_string()
                    .and_then(|s| serde_json::from_str::<VersionOnly>(s).ok())
                    .map(|v| v.version))
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.remote("read", path, e)),
        }
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.client()
            .await
            .list_secrets()
            .max_results(1)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.remote("list secrets in", &self.config.region, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_tokens_are_uuid_shaped_and_deterministic() {
        let a = request_token("etl", "database/orders/etl", 7);
        assert_eq!(a.len(), 36);
        assert_eq!(a, request_token("etl", "database/orders/etl", 7));
        assert_ne!(a, request_token("etl", "database/orders/etl", 8));
        assert_ne!(a, request_token("et", "ldatabase/orders/etl", 7));
        assert_eq!(a.matches('-').count(), 4);
    }
}
