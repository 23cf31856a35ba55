//! The wire format: the JSON documents credrotd prints (`status --format json`) and,
//! later, serves on its admin socket. Domain types never derive `Serialize`; they
//! are converted into these on purpose, so that the contract changes only here.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::inventory::Inventory;
use crate::ledger::{CredState, Credential, Ledger, LedgerError};
use crate::scheduler;

/// Timestamps on the wire: RFC 3339, UTC, whole seconds.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A credential's wire form.
pub fn credential_status(c: &Credential) -> CredentialStatus {
    CredentialStatus {
        version: c.version,
        username: c.username.clone(),
        state: c.state.to_string(),
        issued_at: timestamp(c.issued_at),
        expires_at: timestamp(c.expires_at),
        retire_at: c.retire_at.map(timestamp),
    }
}

/// Every account's status, from the ledger (`status`, `GET /v1/status`).
pub async fn statuses(
    inventory: &Inventory,
    ledger: &Ledger,
    now: DateTime<Utc>,
) -> Result<Vec<AccountStatus>, LedgerError> {
    let mut out = Vec::new();
    let stuck = ledger.stuck_items(None).await?;
    for account in inventory.accounts.values() {
        let live = ledger.live(&account.name).await?;
        let state = ledger.account(&account.name).await?;
        let current = live.iter().rev().find(|c| c.state == CredState::Current);
        let previous = live.iter().rev().find(|c| c.state == CredState::Retiring);
        let refs: Vec<&Credential> = live.iter().collect();
        let next_rotation = scheduler::due(account, &state, &refs, now)
            .into_iter()
            .find_map(|d| match d {
                scheduler::Due::Rotate { at, .. } => Some(timestamp(at)),
                _ => None,
            });
        out.push(AccountStatus {
            account: account.name.clone(),
            database: account.database.clone(),
            strategy: account.strategy.as_str().to_owned(),
            current: current.map(credential_status),
            previous: previous.map(credential_status),
            next_rotation,
            last_result: state.last_result,
            last_error: state.last_error,
            failures: state.failures,
            suspended: state.suspended,
            extended_until: state.extended_until.map(timestamp),
            extended_reason: state.extended_reason,
            foreign_owner: state.foreign_owner,
            stuck: stuck
                .iter()
                .filter(|i| i.account == account.name)
                .map(|i| StuckStatus {
                    kind: i.kind.clone(),
                    subject: i.subject.clone(),
                    error: i.error.clone(),
                    since: timestamp(i.first_at),
                    attempts: i.attempts,
                    retry_at: timestamp(i.retry_at),
                })
                .collect(),
        });
    }
    Ok(out)
}

/// One account's state as shown by `credrotd status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccountStatus {
    pub account: String,
    pub database: String,
    pub strategy: String,
    pub current: Option<CredentialStatus>,
    pub previous: Option<CredentialStatus>,
    /// RFC 3339; `null` when the account is suspended or the schedule has ended.
    pub next_rotation: Option<String>,
    pub last_result: Option<String>,
    pub last_error: Option<String>,
    pub failures: i64,
    pub suspended: bool,
    /// While rotations fail, the expiry guard extended the current credential
    /// until then (RFC 3339), and why.
    #[serde(default)]
    pub extended_until: Option<String>,
    #[serde(default)]
    pub extended_reason: Option<String>,
    /// Another ledger owns the account: credrotd refuses to manage it.
    #[serde(default)]
    pub foreign_owner: Option<String>,
    /// Housekeeping that failed and is retried without blocking issuance.
    #[serde(default)]
    pub stuck: Vec<StuckStatus>,
}

/// A stuck housekeeping item (a login that cannot be dropped, a grant that
/// cannot be revoked, an object that no longer exists).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StuckStatus {
    pub kind: String,
    pub subject: String,
    pub error: String,
    pub since: String,
    pub attempts: i64,
    pub retry_at: String,
}

/// Metadata of one credential. Never the password.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CredentialStatus {
    pub version: i64,
    pub username: String,
    pub state: String,
    pub issued_at: String,
    pub expires_at: String,
    /// When a retiring credential's overlap ends.
    pub retire_at: Option<String>,
}

/// One credential in full metadata (`GET /v1/accounts/{name}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccountDetail {
    #[serde(flatten)]
    pub status: AccountStatus,
    /// Every credential the ledger still considers live, oldest first.
    pub live: Vec<CredentialStatus>,
}

/// `POST /v1/accounts/{name}/revoke` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default)]
    pub previous_only: bool,
}

/// Result of `POST /v1/accounts/{name}/rotate`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RotateResponse {
    pub account: String,
    pub version: i64,
    pub username: String,
    pub expires_at: String,
}

/// Result of `POST /v1/accounts/{name}/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevokeResponse {
    pub account: String,
    pub revoked: Vec<String>,
    pub suspended: bool,
}

/// Result of `POST /v1/reload`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadResponse {
    pub accounts: usize,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub warnings: Vec<String>,
}

/// One entry of the event log (`GET /v1/events?since=ID`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventEntry {
    pub id: i64,
    pub at: String,
    pub account: String,
    pub version: Option<i64>,
    pub kind: String,
    pub detail: String,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub status: String,
}

/// Every error response: `{"error": "..."}` with a 4xx/5xx status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
}
