//! The AWS Secrets Manager store, following AWS's own rotation protocol: the
//! secret named by the account's `path` is created if absent; a publish is
//! `PutSecretValue` staged `AWSPENDING`, with a `ClientRequestToken` derived from
//! account, path and credential version (so a retried write is a no-op); once
//! every store of the account holds the credential, [`Store::promote`] moves
//! `AWSCURRENT` to it (AWS then labels the old one `AWSPREVIOUS`) and removes
//! `AWSPENDING`. A revert or a discard removes `AWSPENDING` (and moves
//! `AWSCURRENT` back if it had moved), so no pending version dangles. AWS makes
//! the first version of a new secret `AWSCURRENT` by itself; reverting that
//! first publish deletes the secret again (without a recovery window).
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

use super::{Publication, Store, StoreError, Undo};
use crate::inventory::AwsConfig;

const CURRENT: &str = "AWSCURRENT";
const PENDING: &str = "AWSPENDING";
const PREVIOUS: &str = "AWSPREVIOUS";

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

    async fn create(&self, account: &str, path: &str) -> Result<(), StoreError> {
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
            Ok(_) => Ok(()),
            // Another replica created it first.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_exists_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(self.remote("create", path, e)),
        }
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
        let undo = Undo {
            account: publication.account.to_owned(),
            path: path.to_owned(),
            version: publication.version,
            previous: None,
            written: None,
        };
        match self.stages(path).await? {
            // Already promoted (a retried step): staging it again would leave
            // AWSPENDING on the current version.
            Some(stages) if has(&stages, &token, CURRENT) => return Ok(undo),
            Some(_) => {}
            None => self.create(publication.account, path).await?,
        }
        let body = publication.to_json();
        let text = Zeroizing::new(String::from_utf8_lossy(&body).into_owned());
        // The SDK takes an owned String for the request; that copy is dropped
        // with the request.
        self.client()
            .await
            .put_secret_value()
            .secret_id(path)
            .client_request_token(&token)
            .secret_string(text.as_str())
            .version_stages(PENDING)
            .send()
            .await
            .map_err(|e| self.remote("put a new version into", path, e))?;
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
        let token = request_token(&undo.account, &undo.path, undo.version);
        let Some(stages) = self.stages(&undo.path).await? else {
            return Ok(());
        };
        if has(&stages, &token, CURRENT) {
            // Promoted already: move AWSCURRENT back to the version AWS kept.
            match holder(&stages, PREVIOUS) {
                Some(prev) => {
                    let prev = prev.to_owned();
                    self.move_stage(&undo.path, CURRENT, Some(&prev), Some(&token))
                        .await?
                }
                None => {
                    // AWS makes the first version of a new secret AWSCURRENT on
                    // its own, and AWSCURRENT cannot be removed, only moved. A
                    // secret holding nothing but this unpromoted credential was
                    // created by this publish: delete it.
                    return self.delete_fresh(&undo.path).await;
                }
            }
        }
        self.drop_pending(&undo.path, &stages, &token).await
    }

    async fn discard(&self, account: &str, path: &str, version: i64) -> Result<(), StoreError> {
        let token = request_token(account, path, version);
        match self.stages(path).await? {
            Some(stages) => self.drop_pending(path, &stages, &token).await,
            None => Ok(()),
        }
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
