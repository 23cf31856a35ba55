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
