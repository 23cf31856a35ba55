//! The inventory: the YAML model, its validation and the environment policy.
//!
//! [`load`] (and [`parse`] for text already in memory) is the one fallible function
//! that turns the raw file into a validated [`Inventory`]: cron parsed, durations
//! parsed, references resolved, names checked, policy applied. `credrotd check` is
//! that function; nothing else in the daemon sees the raw form.
//!
//! This file holds the validated model; `raw.rs` the file as written;
//! `validate/` the checks, one file per section of the inventory. What differs
//! between engines (privileges per object kind, name limits, MySQL hosts,
//! PostgreSQL settings) is in `engine/<engine>/rules.rs`.

mod raw;
mod validate;

pub(crate) use validate::{identifier_problem, is_account_name as is_name};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use serde_saphyr::Location;

use crate::engine::{mysql, postgres};
use crate::schedule::Schedule;
use crate::secret::Secret;
use raw::RawInventory;
use validate::Validator;

/// Longest credential lifetime production allows.
pub const PRODUCTION_MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// How strict the policy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Environment {
    Development,
    Staging,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Staging => "staging",
            Environment::Production => "production",
        }
    }
}

/// A validated inventory. Constructed only by [`parse`].
#[derive(Debug, Clone)]
pub struct Inventory {
    pub source: PathBuf,
    pub environment: Environment,
    /// The ledger URL (`sqlite://...`).
    pub state: String,
    pub timezone: Tz,
    pub admin: Option<AdminConfig>,
    pub metrics: Option<MetricsConfig>,
    pub audit: AuditConfig,
    pub rotation: RotationConfig,
    /// On reload, revoke the credentials of accounts removed from the inventory.
    pub prune: bool,
    pub databases: BTreeMap<String, Database>,
    pub stores: BTreeMap<String, StoreConfig>,
    pub accounts: BTreeMap<String, Account>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub socket: PathBuf,
    pub allow_uids: Vec<u32>,
    pub allow_gids: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: std::net::SocketAddr,
}

/// What the daemon does for `audit` (the `audit:` section).
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// When the daemon audits every database; `None`: only on request
    /// (`credrotd audit`, `ctl audit`, `GET /v1/audit`).
    pub schedule: Option<Schedule>,
    /// A login unused this long is stale (default 30 days).
    pub stale_after: Duration,
    /// How often the daemon samples each database's sessions (default 1 minute).
    pub sample_every: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            schedule: None,
            stale_after: crate::audit::DEFAULT_STALE_AFTER,
            sample_every: Duration::from_secs(60),
        }
    }
}

/// How the scheduler runs rotations.
#[derive(Debug, Clone)]
pub struct RotationConfig {
    /// Rotations of different accounts that may run at once.
    pub concurrency: usize,
    /// First retry delay after a failed rotation; doubles up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            concurrency: 8,
            retry_initial: Duration::from_secs(10),
            retry_max: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Postgres,
    /// MySQL 8 (or MariaDB: the engine detects the server at connect).
    Mysql,
    /// MariaDB, written as such: names may be 80 characters long.
    Mariadb,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Postgres => "postgres",
            EngineKind::Mysql => "mysql",
            EngineKind::Mariadb => "mariadb",
        }
    }

    /// MySQL or MariaDB.
    pub fn is_mysql(self) -> bool {
        matches!(self, EngineKind::Mysql | EngineKind::Mariadb)
    }

    /// The longest login name the server takes: PostgreSQL 63 bytes, MySQL 32
    /// characters, MariaDB 80. `engine: mysql` may turn out to be MariaDB at
    /// connect; the stricter limit applies until `engine: mariadb` is written.
    pub fn max_name_len(self) -> usize {
        match self {
            EngineKind::Postgres => postgres::rules::MAX_NAME_LEN,
            EngineKind::Mysql => mysql::rules::MYSQL_MAX_NAME_LEN,
            EngineKind::Mariadb => mysql::rules::MARIADB_MAX_NAME_LEN,
        }
    }
}

/// Where the admin password for a database comes from.
#[derive(Debug, Clone)]
pub enum PasswordSource {
    /// No separate password: the URL carries it, or the server trusts the client.
    None,
    File(PathBuf),
    Env(String),
}

impl PasswordSource {
    /// Reads the password now (at start-up and on each connect).
    pub fn read(&self) -> std::io::Result<Option<Secret>> {
        match self {
            PasswordSource::None => Ok(None),
            PasswordSource::File(p) => {
                let text = std::fs::read_to_string(p)?;
                Ok(Some(Secret::new(
                    text.trim_end_matches(['\r', '\n']).to_owned(),
                )))
            }
            PasswordSource::Env(var) => match crate::secret_env::var(var) {
                Some(v) => Ok(Some(v)),
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("environment variable {var} is not set"),
                )),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct Database {
    pub name: String,
    pub engine: EngineKind,
    /// The admin connection URL. Never holds a password outside development.
    pub url: String,
    pub password: PasswordSource,
    /// What applications are told (host, port, dbname); defaults to the URL's.
    pub publish_host: Option<String>,
    pub publish_port: Option<u16>,
    pub publish_dbname: Option<String>,
    pub max_connections: u32,
    /// MySQL/MariaDB: the host patterns each login is created for (`["%"]` by
    /// default). Empty for PostgreSQL.
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum StoreKind {
    File { dir: PathBuf, mode: u32 },
    Vault(VaultConfig),
    Aws(AwsConfig),
}

/// A Vault or OpenBao server with a KV version 2 secrets engine.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// `http(s)://host:port`.
    pub address: String,
    /// Where the KV v2 engine is mounted (default `secret`).
    pub mount: String,
    /// Vault Enterprise / OpenBao namespace, sent as `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// PEM file with the CA certificate(s) that signed the server's certificate.
    pub ca_file: Option<PathBuf>,
    pub auth: VaultAuth,
}

/// How credrotd logs in to Vault.
#[derive(Debug, Clone)]
pub enum VaultAuth {
    /// A token from a file or the environment (inline only outside production).
    Token(TokenSource),
    /// AppRole: role id and secret id, read from files at each login.
    AppRole {
        role_id: TokenSource,
        secret_id_file: PathBuf,
        mount: String,
    },
    /// Kubernetes: the service account's JWT, read from a file at each login.
    Kubernetes {
        role: String,
        jwt_file: PathBuf,
        mount: String,
    },
}

impl VaultAuth {
    pub fn method(&self) -> &'static str {
        match self {
            VaultAuth::Token(_) => "token",
            VaultAuth::AppRole { .. } => "approle",
            VaultAuth::Kubernetes { .. } => "kubernetes",
        }
    }
}

/// Where a store credential comes from. Read at each (re-)authentication, so a
/// rotated token file is picked up without a restart.
#[derive(Debug, Clone)]
pub enum TokenSource {
    File(PathBuf),
    Env(String),
    /// Written in the inventory; refused in production.
    Inline(Secret),
}

impl TokenSource {
    pub fn read(&self) -> std::io::Result<Secret> {
        match self {
            TokenSource::File(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
                Ok(Secret::new(text.trim().to_owned()))
            }
            TokenSource::Env(var) => crate::secret_env::var(var).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("environment variable {var} is not set"),
                )
            }),
            TokenSource::Inline(s) => Ok(s.clone()),
        }
    }
}

/// An AWS Secrets Manager region (credentials from the SDK's default chain).
#[derive(Debug, Clone)]
pub struct AwsConfig {
    pub region: String,
    /// Another endpoint URL (VPC endpoint, or moto in tests).
    pub endpoint: Option<String>,
    /// KMS key for new secrets; AWS's default key when absent.
    pub kms_key_id: Option<String>,
}

/// AWS advises against writing one secret more often than about every 10 minutes.
pub const AWS_MIN_WRITE_INTERVAL: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub name: String,
    pub kind: StoreKind,
}

/// How an account's login credentials are issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// A new login role per rotation, member of the scoped role.
    Ephemeral,
    /// Two fixed login roles `<account>_a` / `<account>_b`, used in turn.
    Alternating,
    /// An existing role whose password is replaced in place.
    Static {
        role: String,
        /// Take the role over without rotating it at start-up; the first rotation
        /// happens at the next scheduled fire.
        adopt: bool,
    },
}

impl Strategy {
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Ephemeral => "ephemeral",
            Strategy::Alternating => "alternating",
            Strategy::Static { .. } => "static",
        }
    }
}

/// The kind of object a grant is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Schema,
    Table,
    Sequence,
    Function,
    /// MySQL/MariaDB stored procedures.
    Procedure,
}

impl ObjectKind {
    /// Privileges that exist for this kind, in PostgreSQL's spelling.
    pub fn privileges(self) -> &'static [&'static str] {
        postgres::rules::privileges(self)
    }

    /// Privileges that exist for this kind on `engine`, in its spelling
    /// (`engine/<engine>/rules.rs`).
    pub fn privileges_for(self, engine: EngineKind) -> &'static [&'static str] {
        if !engine.is_mysql() {
            return self.privileges();
        }
        mysql::rules::privileges(self)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Schema => "schema",
            ObjectKind::Table => "tables",
            ObjectKind::Sequence => "sequences",
            ObjectKind::Function => "functions",
            ObjectKind::Procedure => "procedures",
        }
    }
}

/// Privileges that let an account change schema, not only data.
pub const DDL_PRIVILEGES: &[&str] = &[
    "CREATE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
    "DROP",
    "ALTER",
    "INDEX",
    "CREATE VIEW",
    "CREATE ROUTINE",
    "ALTER ROUTINE",
    "EVENT",
];

/// MySQL/MariaDB privileges on a table and on a database (`db.*`).
pub use crate::engine::mysql::rules::{
    DATABASE_PRIVILEGES as MYSQL_DATABASE_PRIVILEGES, TABLE_PRIVILEGES as MYSQL_TABLE_PRIVILEGES,
};

/// Which objects of a kind a grant covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Objects {
    /// Every object in the schema, including ones created later (default privileges).
    All,
    Named(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub schema: String,
    pub kind: ObjectKind,
    /// `None` for a grant on the schema itself.
    pub objects: Option<Objects>,
    pub privileges: BTreeSet<&'static str>,
    /// A row-level security expression (PostgreSQL, tables only): credrotd keeps
    /// one policy per account and table `TO` the scoped role.
    pub row_filter: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RevokePolicy {
    /// End the login's sessions when it is revoked.
    pub terminate_sessions: bool,
    /// Time between refusing new logins and ending sessions / dropping the role.
    pub grace: Duration,
}

/// How to tell an account's consumers that a new credential is current.
#[derive(Debug, Clone, Default)]
pub struct Notify {
    /// A command and its arguments; it gets CREDROTD_ACCOUNT, CREDROTD_VERSION and
    /// CREDROTD_FILE in its environment, never the password.
    pub exec: Option<Vec<String>>,
    /// A process to signal, by pid file.
    pub signal: Option<(PathBuf, nix::sys::signal::Signal)>,
    /// How long the command may run.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Account {
    /// `^[a-z][a-z0-9_]{0,39}$`; also the scoped role's name.
    pub name: String,
    pub database: String,
    pub purpose: Option<String>,
    pub owner: Option<String>,
    pub strategy: Strategy,
    pub schedule: Schedule,
    pub overlap: Duration,
    pub expiry_margin: Duration,
    /// A fixed lifetime; when `None` the expiry follows the schedule.
    pub lifetime: Option<Duration>,
    /// The expiry guard never extends a credential beyond `issued_at` plus this,
    /// however long rotations keep failing: a credential must die eventually.
    pub max_lifetime: Duration,
    pub grants: Vec<Grant>,
    pub member_of: Vec<String>,
    pub settings: BTreeMap<String, String>,
    pub connection_limit: Option<i32>,
    pub stores: Vec<String>,
    pub path: String,
    pub allow_ddl: bool,
    pub revoke: RevokePolicy,
    pub notify: Notify,
}

impl Account {
    /// The scoped (NOLOGIN) role that holds this account's privileges.
    pub fn scoped_role(&self) -> &str {
        &self.name
    }
}

/// A located message about the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub severity: Severity,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {sev}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Why an inventory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read inventory {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(.errors))]
    Invalid { errors: Vec<Diagnostic> },
}

fn render(diags: &[Diagnostic]) -> String {
    let lines: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    format!(
        "inventory is invalid ({} error{}):\n{}",
        diags.len(),
        if diags.len() == 1 { "" } else { "s" },
        lines.join("\n")
    )
}

/// A validated inventory plus the warnings found on the way.
#[derive(Debug)]
pub struct Checked {
    pub inventory: Inventory,
    pub warnings: Vec<Diagnostic>,
}

/// Reads and validates an inventory file.
pub fn load(path: &Path) -> Result<Checked, InventoryError> {
    let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// The inventory's JSON Schema (draft 2020-12), generated from the very types
/// the parser reads (`raw.rs`), so that it cannot drift from it. Editors use it
/// through the `# yaml-language-server: $schema=…` comment; `credrotd schema`
/// prints it; `config/inventory.schema.json` is this, committed.
pub fn json_schema() -> String {
    let mut schema = schemars::schema_for!(raw::RawInventory);
    schema.insert(
        "title".into(),
        serde_json::Value::String("credrotd inventory".into()),
    );
    schema.insert(
        "$id".into(),
        serde_json::Value::String("https://credrotd.invalid/config/inventory.schema.json".into()),
    );
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// The environment variables an inventory file reads secrets from
/// (`password_env`, `token_env`), and the AWS SDK's keys when it has an AWS
/// store: what `main` takes out of the environment before any thread starts.
/// Reads only those keys; an unreadable or invalid file gives what could be
/// found (the command itself reports the error).
pub fn secret_env_names(path: &Path) -> Vec<String> {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Top {
        databases: HashMap<String, Db>,
        stores: HashMap<String, Store>,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Db {
        password_env: Option<String>,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Store {
        kind: Option<String>,
        auth: Option<Auth>,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Auth {
        token_env: Option<String>,
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let Ok(top) = serde_saphyr::from_str_with_options::<Top>(&text, parse_options()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = top
        .databases
        .into_values()
        .filter_map(|d| d.password_env)
        .collect();
    for s in top.stores.into_values() {
        if s.kind.as_deref() == Some("aws_secrets_manager") {
            names.extend(crate::secret_env::AWS_VARS.map(str::to_owned));
        }
        names.extend(s.auth.and_then(|a| a.token_env));
    }
    names.sort();
    names.dedup();
    names
}

fn parse_options() -> serde_saphyr::Options {
    // serde-saphyr's default budget (250,000 nodes, 1,000,000 events) refuses an
    // inventory of about 10,000 accounts; the alias limits that stop an
    // expansion attack stay at their defaults.
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_nodes: 20_000_000,
            max_events: 80_000_000,
        },
    }
}

/// Validates inventory text; `path` names it in messages and anchors relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Checked, InventoryError> {
    let raw: RawInventory = match serde_saphyr::from_str_with_options(text, parse_options()) {
        Ok(raw) => raw,
        Err(e) => {
            let loc = e.location().unwrap_or(Location::UNKNOWN);
            return Err(InventoryError::Invalid {
                errors: vec![Diagnostic {
                    file: path.to_owned(),
                    line: loc.line().max(1),
                    column: loc.column().max(1),
                    severity: Severity::Error,
                    message: parse_message(&e),
                }],
            });
        }
    };
    let mut v = Validator {
        file: path.to_owned(),
        base: path.parent().map(Path::to_owned).unwrap_or_default(),
        diags: Vec::new(),
        environment: Environment::Production,
        unsupported: BTreeSet::new(),
    };
    let inventory = v.inventory(raw);
    let (errors, warnings): (Vec<_>, Vec<_>) = v
        .diags
        .into_iter()
        .partition(|d| d.severity == Severity::Error);
    match inventory {
        Some(inventory) if errors.is_empty() => Ok(Checked {
            inventory,
            warnings,
        }),
        _ => Err(InventoryError::Invalid { errors }),
    }
}

/// The parser's message without its own location prefix or source snippet (we
/// print `file:line:col:` ourselves).
fn parse_message(e: &serde_saphyr::Error) -> String {
    let full = e.to_string();
    let mut msg = full.lines().next().unwrap_or("").trim();
    msg = msg.strip_prefix("error: ").unwrap_or(msg);
    // "line L column C: msg" or "msg at line L, column C".
    if msg.starts_with("line ") {
        if let Some(i) = msg.find(": ") {
            msg = &msg[i + 2..];
        }
    }
    if let Some(i) = msg.rfind(" at line ") {
        msg = &msg[..i];
    }
    msg.to_owned()
}

#[cfg(test)]
mod tests;
