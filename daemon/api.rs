//! The wire format: the JSON documents credrotd prints (`status --format json`) and,
//! later, serves on its admin socket. Domain types never derive `Serialize`; they
//! are converted into these on purpose, so that the contract changes only here.

use serde::{Deserialize, Serialize};

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
