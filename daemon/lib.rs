//! credrotd: a credential rotation daemon for machine identities.
//!
//! # Layout
//! Data flows one way: inventory → plan → scheduler → rotation → engine/store,
//! and every step is recorded in the ledger before it happens.
//!
//! - [`inventory`]: the YAML model, its validation and the environment policy.
//! - [`schedule`]: pure time arithmetic (next fire, expiry, backoff).
//! - [`clock`]: the injected clock; the only place that reads the wall clock.
//! - [`secret`]: the redacting, zeroizing secret type and the password generator.
//! - [`engine`]: target databases (PostgreSQL); the only module that writes SQL
//!   against them.
//! - [`store`]: secret stores (file) and the secret payload.
//! - [`ledger`]: the durable state (SQLite via sqlx): credentials, events, leases.
//! - [`rotation`]: the saga that issues, verifies, publishes, promotes and revokes,
//!   and the start-up recovery that finishes or rolls back what a crash left.
//! - [`scheduler`]: when each account rotates and retires; runs the saga.
//! - [`api`]: the wire format of JSON output (and the admin API).
//! - [`cli`]: the command line (`check`, `plan`, `run`, `rotate`, ...).
//! - [`notify`]: tells consumers that a new credential is current.
//! - [`telemetry`]: every Prometheus metric, in one place.
//! - [`systemd`]: readiness, status, reload and watchdog notifications.
//! - [`admin`]: the admin socket (HTTP/1.1 + JSON over a Unix socket) and its client.
//! - [`service`]: `credrotd run`: start-up, listeners, signals, reload, shutdown.
//! - [`demo`]: the quickstart on a throwaway PostgreSQL.

pub mod admin;
pub mod api;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod demo;
pub mod engine;
pub mod import;
pub mod inventory;
pub mod ledger;
pub mod memory;
pub mod notify;
pub mod progress;
pub mod rotation;
pub mod schedule;
pub mod scheduler;
pub mod secret;
pub mod secret_env;
pub mod service;
pub mod store;
pub mod systemd;
pub mod telemetry;
