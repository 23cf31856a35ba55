//! The inventory: the YAML model, its validation and the environment policy.
//!
//! [`load`] (and [`parse`] for text already in memory) is the one fallible function
//! that turns the raw file into a validated [`Inventory`]: cron parsed, durations
//! parsed, references resolved, names checked, policy applied. `credrotd check` is
//! that function; nothing else in the daemon sees the raw form.

mod raw;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use chrono_tz::Tz;
use serde_saphyr::{Location, Spanned};

use crate::schedule::Schedule;
use crate::secret::Secret;
use raw::{ObjectList, RawAccount, RawDatabase, RawGrant, RawInventory, RawStore, RawVaultAuth, S};

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
            EngineKind::Postgres => 63,
            EngineKind::Mysql => 32,
            EngineKind::Mariadb => 80,
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
            PasswordSource::Env(var) => match std::env::var(var) {
                Ok(v) => Ok(Some(Secret::new(v))),
                Err(_) => Err(std::io::Error::new(
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
            TokenSource::Env(var) => std::env::var(var).map(Secret::new).map_err(|_| {
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
        match self {
            ObjectKind::Schema => &["USAGE", "CREATE"],
            ObjectKind::Table => &[
                "SELECT",
                "INSERT",
                "UPDATE",
                "DELETE",
                "TRUNCATE",
                "REFERENCES",
                "TRIGGER",
            ],
            ObjectKind::Sequence => &["USAGE", "SELECT", "UPDATE"],
            ObjectKind::Function | ObjectKind::Procedure => &["EXECUTE"],
        }
    }

    /// Privileges that exist for this kind on `engine`, in its spelling. For
    /// MySQL a grant without objects is on the database (`db.*`): the
    /// database-level privileges; `tables: "*"` is also `db.*`, with the table
    /// privileges.
    pub fn privileges_for(self, engine: EngineKind) -> &'static [&'static str] {
        if !engine.is_mysql() {
            return self.privileges();
        }
        match self {
            ObjectKind::Schema => MYSQL_DATABASE_PRIVILEGES,
            ObjectKind::Table => MYSQL_TABLE_PRIVILEGES,
            ObjectKind::Function | ObjectKind::Procedure => &["EXECUTE", "ALTER ROUTINE"],
            ObjectKind::Sequence => &[],
        }
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

/// MySQL/MariaDB privileges on a table (`db.t`, or every table: `db.*`).
pub const MYSQL_TABLE_PRIVILEGES: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "CREATE",
    "DROP",
    "INDEX",
    "ALTER",
    "REFERENCES",
    "TRIGGER",
    "CREATE VIEW",
    "SHOW VIEW",
];

/// MySQL/MariaDB privileges on a database (`db.*`): the table ones on every
/// table, and those that exist only at database level.
pub const MYSQL_DATABASE_PRIVILEGES: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "INDEX",
    "ALTER",
    "REFERENCES",
    "TRIGGER",
    "CREATE",
    "DROP",
    "CREATE TEMPORARY TABLES",
    "LOCK TABLES",
    "CREATE ROUTINE",
    "ALTER ROUTINE",
    "EXECUTE",
    "EVENT",
    "CREATE VIEW",
    "SHOW VIEW",
];

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

/// Validates inventory text; `path` names it in messages and anchors relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Checked, InventoryError> {
    let raw: RawInventory = match serde_saphyr::from_str(text) {
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

static ACCOUNT_NAME_RULE: &str = "^[a-z][a-z0-9_]{0,39}$";

fn is_account_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 40
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// Object and role names are quoted with the server's rules, so any text is safe
/// in a statement; we still refuse what no sane catalog holds.
fn identifier_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("must not be empty")
    } else if s.len() > 63 {
        Some("is longer than 63 bytes, the PostgreSQL identifier limit")
    } else if s.chars().any(|c| c.is_control() || c == '"') {
        Some("contains a control character or a double quote")
    } else {
        None
    }
}

/// A MySQL account host part credrotd accepts: a name, an address or a pattern
/// with `%` and `_`, as the server stores it (lowercase, at most 255 bytes).
fn mysql_host_problem(h: &str) -> Option<&'static str> {
    if h.is_empty() {
        Some("must not be empty (write \"%\" for any host)")
    } else if h.len() > 255 {
        Some("is longer than 255 bytes, the server's limit")
    } else if h.chars().any(|c| c.is_ascii_uppercase()) {
        Some("must be lowercase (the server stores host names in lowercase)")
    } else if !h
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "%_.-:/".contains(c))
    {
        Some("may hold only letters, digits and % _ . - : /")
    } else {
        None
    }
}

/// The values of the keys `keys` in a URL's query string, in order.
fn url_query_values<'a>(url: &'a str, keys: &[&str]) -> Vec<&'a str> {
    let Some((_, q)) = url.split_once('?') else {
        return Vec::new();
    };
    q.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            keys.contains(&k).then_some(v)
        })
        .collect()
}

fn is_setting_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && (b[0].is_ascii_lowercase() || b[0] == b'_')
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
        })
}

/// Settings that would let an account escape its scoped role, that only a
/// superuser may set, or that take a list (a quoted value would become one
/// element).
const FORBIDDEN_SETTINGS: &[&str] = &[
    "role",
    "session_authorization",
    "session_replication_role",
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "local_preload_libraries",
    "shared_preload_libraries",
];

/// Predefined roles that production refuses as `member_of` targets: each one reads
/// or writes everything, or reaches the server's file system.
const DANGEROUS_MEMBERSHIPS: &[&str] = &[
    "pg_read_all_data",
    "pg_write_all_data",
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
];

struct Validator {
    file: PathBuf,
    base: PathBuf,
    diags: Vec<Diagnostic>,
    environment: Environment,
    /// Databases and stores that were reported as unsupported, so that accounts
    /// naming them do not also get "unknown database".
    unsupported: BTreeSet<String>,
}

struct Defaults {
    schedule: Option<S<String>>,
    overlap: Option<S<String>>,
    expiry_margin: Option<S<String>>,
    max_lifetime: Option<S<String>>,
    strategy: Option<S<String>>,
    store: Option<S<Vec<String>>>,
}

impl Validator {
    fn push(&mut self, at: &Location, severity: Severity, message: String) {
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            line: at.line().max(1),
            column: at.column().max(1),
            severity,
            message,
        });
    }

    fn error(&mut self, at: &Location, message: impl Into<String>) {
        self.push(at, Severity::Error, message.into());
    }

    fn warn(&mut self, at: &Location, message: impl Into<String>) {
        self.push(at, Severity::Warning, message.into());
    }

    /// A rule of the environment policy: an error in production, a warning that
    /// says what production would refuse elsewhere.
    fn policy(&mut self, at: &Location, message: impl Into<String>) {
        let message = message.into();
        if self.environment == Environment::Production {
            self.error(at, message);
        } else {
            self.warn(at, format!("production would refuse this: {message}"));
        }
    }

    fn duration(&mut self, v: &S<String>, what: &str) -> Option<Duration> {
        let text = v.value.trim();
        if text == "0" {
            return Some(Duration::ZERO);
        }
        match humantime::parse_duration(text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    &v.referenced,
                    format!(
                        "{what}: invalid duration {text:?} ({e}); expected e.g. 30s, 15m, 6h, 7d"
                    ),
                );
                None
            }
        }
    }

    /// A secret file: relative paths are resolved against systemd's
    /// `$CREDENTIALS_DIRECTORY` (where `LoadCredential=` puts them) when it is
    /// set, else against the inventory's directory.
    fn secret_path(&self, p: &str) -> PathBuf {
        match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) if Path::new(p).is_relative() => PathBuf::from(dir).join(p),
            _ => self.path(p),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }

    fn inventory(&mut self, raw: RawInventory) -> Option<Inventory> {
        let top = raw.version.referenced;
        if raw.version.value != 1 {
            self.error(
                &raw.version.referenced,
                format!(
                    "unsupported inventory version {}; expected 1",
                    raw.version.value
                ),
            );
        }
        self.environment = match raw.environment.as_ref().map(|e| e.value.as_str()) {
            None | Some("production") => Environment::Production,
            Some("staging") => Environment::Staging,
            Some("development") => Environment::Development,
            Some(other) => {
                let at = raw
                    .environment
                    .as_ref()
                    .map(|e| e.referenced)
                    .unwrap_or(top);
                self.error(
                    &at,
                    format!("unknown environment {other:?}; expected production, staging or development"),
                );
                Environment::Production
            }
        };
        let state = match &raw.state {
            None => "sqlite:///var/lib/credrotd/state.db".to_owned(),
            Some(s) => {
                if s.value.starts_with("sqlite:") {
                    s.value.clone()
                } else if s.value.starts_with("postgres://") || s.value.starts_with("postgresql://")
                {
                    self.error(
                        &s.referenced,
                        "a PostgreSQL ledger (for several replicas) is not supported yet; use sqlite:///path/state.db",
                    );
                    s.value.clone()
                } else {
                    self.error(
                        &s.referenced,
                        format!("state: expected a sqlite:// URL, found {:?}", s.value),
                    );
                    s.value.clone()
                }
            }
        };
        let timezone = match &raw.timezone {
            None => chrono_tz::UTC,
            Some(tz) => match tz.value.parse::<Tz>() {
                Ok(tz) => tz,
                Err(_) => {
                    self.error(
                        &tz.referenced,
                        format!("unknown time zone {:?}; expected an IANA name such as UTC or Europe/Paris", tz.value),
                    );
                    chrono_tz::UTC
                }
            },
        };
        let admin = raw.admin.map(|a| AdminConfig {
            socket: a
                .socket
                .map(|s| self.path(&s.value))
                .unwrap_or_else(|| PathBuf::from("/run/credrotd/admin.sock")),
            allow_uids: if a.allow_uids.is_empty() {
                vec![0]
            } else {
                a.allow_uids
            },
            allow_gids: a.allow_gids,
        });
        let metrics = raw.metrics.and_then(|m| match m.listen.value.parse() {
            Ok(listen) => Some(MetricsConfig { listen }),
            Err(_) => {
                self.error(
                    &m.listen.referenced,
                    format!(
                        "metrics.listen: expected host:port such as 127.0.0.1:9477, found {:?}",
                        m.listen.value
                    ),
                );
                None
            }
        });
        let mut rotation = RotationConfig::default();
        if let Some(r) = raw.rotation {
            if let Some(c) = r.concurrency {
                if c.value == 0 || c.value > 1024 {
                    self.error(
                        &c.referenced,
                        "rotation.concurrency must be between 1 and 1024",
                    );
                } else {
                    rotation.concurrency = c.value as usize;
                }
            }
            if let Some(d) = r
                .retry_initial
                .as_ref()
                .and_then(|d| self.duration(d, "rotation.retry_initial"))
            {
                rotation.retry_initial = d.max(Duration::from_secs(1));
            }
            if let Some(d) = r
                .retry_max
                .as_ref()
                .and_then(|d| self.duration(d, "rotation.retry_max"))
            {
                rotation.retry_max = d.max(rotation.retry_initial);
            }
        }
        let d = raw.defaults.unwrap_or_default();
        let defaults = Defaults {
            schedule: d.schedule,
            overlap: d.overlap,
            expiry_margin: d.expiry_margin,
            max_lifetime: d.max_lifetime,
            strategy: d.strategy,
            store: d
                .store
                .map(|s| Spanned::new(s.value.into_vec(), s.referenced, s.defined)),
        };

        let mut databases = BTreeMap::new();
        for (name, db) in raw.databases.0 {
            if databases.contains_key(&name.value) {
                self.error(
                    &name.referenced,
                    format!("database {:?} is defined twice", name.value),
                );
                continue;
            }
            if let Some(db) = self.database(&name, db) {
                databases.insert(name.value.clone(), db);
            }
        }
        let mut stores = BTreeMap::new();
        for (name, st) in raw.stores.0 {
            if stores.contains_key(&name.value) {
                self.error(
                    &name.referenced,
                    format!("store {:?} is defined twice", name.value),
                );
                continue;
            }
            if let Some(st) = self.store(&name, st) {
                stores.insert(name.value.clone(), st);
            }
        }
        let mut accounts: BTreeMap<String, Account> = BTreeMap::new();
        let mut role_names: BTreeMap<String, String> = BTreeMap::new();
        for (name, acc) in raw.accounts.0 {
            if accounts.contains_key(&name.value) {
                self.error(
                    &name.referenced,
                    format!("account {:?} is defined twice", name.value),
                );
                continue;
            }
            if let Some(acc) = self.account(&name, acc, &defaults, &databases, &stores, timezone) {
                // Login roles of one account must never look like another's.
                for derived in derived_role_names(&acc) {
                    if let Some(other) = role_names.insert(derived.clone(), acc.name.clone()) {
                        self.error(
                            &name.referenced,
                            format!("account {:?} would use role {derived:?}, which account {other:?} also uses", acc.name),
                        );
                    }
                }
                accounts.insert(acc.name.clone(), acc);
            }
        }
        if accounts.is_empty() && self.diags.iter().all(|d| d.severity != Severity::Error) {
            self.warn(&top, "the inventory lists no accounts");
        }
        Some(Inventory {
            source: self.file.clone(),
            environment: self.environment,
            state,
            timezone,
            admin,
            metrics,
            rotation,
            prune: raw.prune.is_some_and(|p| p.value),
            databases,
            stores,
            accounts,
        })
    }

    fn database(&mut self, name: &S<String>, db: RawDatabase) -> Option<Database> {
        if !is_account_name(&name.value) {
            self.error(
                &name.referenced,
                format!(
                    "database name {:?} must match {ACCOUNT_NAME_RULE}",
                    name.value
                ),
            );
        }
        let engine = match db.engine.value.as_str() {
            "postgres" | "postgresql" => Some(EngineKind::Postgres),
            "mysql" => Some(EngineKind::Mysql),
            "mariadb" => Some(EngineKind::Mariadb),
            other => {
                self.error(
                    &db.engine.referenced,
                    format!("unknown engine {other:?}; expected postgres, mysql or mariadb"),
                );
                self.unsupported.insert(name.value.clone());
                None
            }
        };
        let url = db.url.value.clone();
        let mysql = engine.is_some_and(EngineKind::is_mysql);
        let url_ok = if mysql {
            url.starts_with("mysql://") || url.starts_with("mariadb://")
        } else {
            url.starts_with("postgres://") || url.starts_with("postgresql://")
        };
        if engine.is_some() && !url_ok {
            // Name only the scheme: the rest of a URL may carry a password.
            let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("(none)");
            let want = if mysql {
                "mysql://user@host:port/dbname"
            } else {
                "postgres://user@host:port/dbname"
            };
            self.error(
                &db.url.referenced,
                format!("url: expected {want}, found a URL with scheme {scheme:?}"),
            );
        } else if url_has_password(&url) {
            self.policy(&db.url.referenced, format!("database {:?}: the url carries a password inline; use password_file or password_env", name.value));
        }
        if mysql {
            // sqlx reads `sslmode` as well as `ssl-mode`.
            for mode in url_query_values(&url, &["ssl-mode", "sslmode"]) {
                let known = [
                    "disabled",
                    "preferred",
                    "required",
                    "verify_ca",
                    "verify_identity",
                ];
                if !known.contains(&mode.to_ascii_lowercase().as_str()) {
                    self.error(&db.url.referenced, format!("url: unknown ssl-mode {mode:?}; expected one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY"));
                }
            }
        }
        let hosts = match (&db.hosts, mysql) {
            // An unknown engine is reported already.
            (Some(_), false) if engine.is_none() => Vec::new(),
            (Some(h), false) => {
                self.error(
                    &h.referenced,
                    "`hosts` applies to engine mysql or mariadb only",
                );
                Vec::new()
            }
            (None, false) => Vec::new(),
            (None, true) => vec!["%".to_owned()],
            (Some(h), true) => {
                let mut out: Vec<String> = Vec::new();
                if h.value.is_empty() {
                    self.error(
                        &h.referenced,
                        "`hosts` lists no host; leave it out for [\"%\"]",
                    );
                }
                for host in &h.value {
                    if let Some(p) = mysql_host_problem(&host.value) {
                        self.error(&host.referenced, format!("host {:?} {p}", host.value));
                    } else if out.contains(&host.value) {
                        self.error(
                            &host.referenced,
                            format!("host {:?} is listed twice", host.value),
                        );
                    } else {
                        out.push(host.value.clone());
                    }
                }
                out
            }
        };
        let password = match (&db.password_file, &db.password_env) {
            (Some(f), Some(_)) => {
                self.error(&f.referenced, "set password_file or password_env, not both");
                PasswordSource::None
            }
            (Some(f), None) => PasswordSource::File(self.secret_path(&f.value)),
            (None, Some(e)) => PasswordSource::Env(e.value.clone()),
            (None, None) => PasswordSource::None,
        };
        let (publish_host, publish_port, publish_dbname) = match db.publish {
            Some(p) => (
                p.host.map(|h| h.value),
                p.port.map(|p| p.value),
                p.dbname.map(|d| d.value),
            ),
            None => (None, None, None),
        };
        let max_connections = match db.max_connections {
            Some(m) if m.value == 0 => {
                self.error(&m.referenced, "max_connections must be at least 1");
                4
            }
            Some(m) => m.value,
            None => 4,
        };
        Some(Database {
            name: name.value.clone(),
            engine: engine?,
            url,
            password,
            publish_host,
            publish_port,
            publish_dbname,
            max_connections,
            hosts,
        })
    }

    fn store(&mut self, name: &S<String>, st: RawStore) -> Option<StoreConfig> {
        if !is_account_name(&name.value) {
            self.error(
                &name.referenced,
                format!("store name {:?} must match {ACCOUNT_NAME_RULE}", name.value),
            );
        }
        match st.kind.value.as_str() {
            "file" => {
                let Some(dir) = st.dir else {
                    self.error(
                        &st.kind.referenced,
                        format!("store {:?}: kind file needs `dir`", name.value),
                    );
                    return None;
                };
                let mode = match st.mode {
                    None => 0o440,
                    Some(m) => match u32::from_str_radix(m.value.trim_start_matches("0o"), 8) {
                        Ok(mode) if mode <= 0o777 => {
                            if mode & 0o007 != 0 {
                                self.policy(&m.referenced, format!("store {:?}: mode {:o} lets every local user read credentials", name.value, mode));
                            }
                            mode
                        }
                        _ => {
                            self.error(&m.referenced, format!("mode: expected an octal file mode such as \"0440\", found {:?}", m.value));
                            0o440
                        }
                    },
                };
                self.not_for_kind(
                    name,
                    "file",
                    &[
                        ("address", &st.address),
                        ("mount", &st.mount),
                        ("namespace", &st.namespace),
                        ("ca_file", &st.ca_file),
                        ("region", &st.region),
                        ("endpoint", &st.endpoint),
                        ("kms_key_id", &st.kms_key_id),
                    ],
                );
                if let Some(a) = &st.auth {
                    self.error(
                        &a.referenced,
                        format!("store {:?}: `auth` does not apply to kind file", name.value),
                    );
                }
                Some(StoreConfig {
                    name: name.value.clone(),
                    kind: StoreKind::File {
                        dir: self.path(&dir.value),
                        mode,
                    },
                })
            }
            "vault" => {
                self.not_for_kind(
                    name,
                    "vault",
                    &[
                        ("dir", &st.dir),
                        ("mode", &st.mode),
                        ("region", &st.region),
                        ("endpoint", &st.endpoint),
                        ("kms_key_id", &st.kms_key_id),
                    ],
                );
                let address = match &st.address {
                    None => {
                        self.error(
                            &st.kind.referenced,
                            format!(
                                "store {:?}: kind vault needs `address` (https://host:8200)",
                                name.value
                            ),
                        );
                        None
                    }
                    Some(a) => self.vault_address(name, a),
                };
                let mount = match &st.mount {
                    None => Some("secret".to_owned()),
                    Some(m) => self.mount_name(name, m, "mount"),
                };
                let auth = match st.auth {
                    None => {
                        self.error(&st.kind.referenced, format!("store {:?}: kind vault needs `auth` (method token, approle or kubernetes)", name.value));
                        None
                    }
                    Some(a) => self.vault_auth(name, a),
                };
                let namespace = st.namespace.map(|n| n.value.trim_matches('/').to_owned());
                let ca_file = st.ca_file.map(|c| self.path(&c.value));
                Some(StoreConfig {
                    name: name.value.clone(),
                    kind: StoreKind::Vault(VaultConfig {
                        address: address?,
                        mount: mount?,
                        namespace,
                        ca_file,
                        auth: auth?,
                    }),
                })
            }
            "aws_secrets_manager" => {
                self.not_for_kind(
                    name,
                    "aws_secrets_manager",
                    &[
                        ("dir", &st.dir),
                        ("mode", &st.mode),
                        ("address", &st.address),
                        ("mount", &st.mount),
                        ("namespace", &st.namespace),
                        ("ca_file", &st.ca_file),
                    ],
                );
                if let Some(a) = &st.auth {
                    self.error(&a.referenced, format!("store {:?}: `auth` does not apply to kind aws_secrets_manager (it uses the AWS SDK's default credential chain)", name.value));
                }
                let region = match &st.region {
                    None => {
                        self.error(&st.kind.referenced, format!("store {:?}: kind aws_secrets_manager needs `region` (e.g. eu-west-1)", name.value));
                        None
                    }
                    Some(r) if !is_aws_region(&r.value) => {
                        self.error(&r.referenced, format!("store {:?}: region {:?} is not an AWS region name such as eu-west-1", name.value, r.value));
                        None
                    }
                    Some(r) => Some(r.value.clone()),
                };
                let endpoint = match &st.endpoint {
                    Some(e)
                        if !(e.value.starts_with("https://") || e.value.starts_with("http://")) =>
                    {
                        self.error(
                            &e.referenced,
                            format!(
                                "store {:?}: endpoint must be an http:// or https:// URL",
                                name.value
                            ),
                        );
                        None
                    }
                    Some(e) => {
                        if e.value.starts_with("http://") && !is_loopback_url(&e.value) {
                            self.policy(&e.referenced, format!("store {:?}: endpoint {:?} is plain http to another host; use https", name.value, e.value));
                        }
                        Some(e.value.clone())
                    }
                    None => None,
                };
                let kms_key_id = match &st.kms_key_id {
                    Some(k) if k.value.trim().is_empty() => {
                        self.error(
                            &k.referenced,
                            format!("store {:?}: kms_key_id is empty", name.value),
                        );
                        None
                    }
                    Some(k) => Some(k.value.clone()),
                    None => None,
                };
                Some(StoreConfig {
                    name: name.value.clone(),
                    kind: StoreKind::Aws(AwsConfig {
                        region: region?,
                        endpoint,
                        kms_key_id,
                    }),
                })
            }
            other => {
                self.error(
                    &st.kind.referenced,
                    format!(
                        "unknown store kind {other:?}; expected file, vault or aws_secrets_manager"
                    ),
                );
                None
            }
        }
    }

    /// Reports keys that do not apply to a store kind.
    fn not_for_kind(&mut self, name: &S<String>, kind: &str, keys: &[(&str, &Option<S<String>>)]) {
        for (key, val) in keys {
            if let Some(v) = val {
                self.error(
                    &v.referenced,
                    format!(
                        "store {:?}: `{key}` does not apply to kind {kind}",
                        name.value
                    ),
                );
            }
        }
    }

    fn vault_address(&mut self, name: &S<String>, a: &S<String>) -> Option<String> {
        let v = a.value.trim_end_matches('/');
        if !(v.starts_with("https://") || v.starts_with("http://"))
            || v.contains('@')
            || url::Url::parse(v).is_err()
        {
            self.error(&a.referenced, format!("store {:?}: address must be an http:// or https:// URL without credentials, such as https://vault:8200", name.value));
            return None;
        }
        if v.starts_with("http://") && !is_loopback_url(v) {
            self.policy(
                &a.referenced,
                format!(
                    "store {:?}: address {v:?} sends the Vault token in plain text; use https",
                    name.value
                ),
            );
        }
        Some(v.to_owned())
    }

    fn mount_name(&mut self, name: &S<String>, m: &S<String>, what: &str) -> Option<String> {
        let v = m.value.trim_matches('/');
        if v.is_empty()
            || v.contains("..")
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            self.error(
                &m.referenced,
                format!(
                    "store {:?}: {what} {:?} must be a Vault mount path such as secret",
                    name.value, m.value
                ),
            );
            return None;
        }
        Some(v.to_owned())
    }

    /// A secret read by the store itself: from a file or the environment, or
    /// inline outside production.
    fn token_source(
        &mut self,
        name: &S<String>,
        at: &Location,
        what: &str,
        file: Option<S<String>>,
        env: Option<S<String>>,
        inline: Option<S<String>>,
    ) -> Option<TokenSource> {
        match (file, env, inline) {
            (Some(f), None, None) => Some(TokenSource::File(self.path(&f.value))),
            (None, Some(e), None) => Some(TokenSource::Env(e.value)),
            (None, None, Some(i)) => {
                self.policy(
                    &i.referenced,
                    format!(
                        "store {:?}: the {what} is written inline; use {what}_file or {what}_env",
                        name.value
                    ),
                );
                Some(TokenSource::Inline(Secret::new(i.value)))
            }
            (None, None, None) => {
                self.error(
                    at,
                    format!(
                        "store {:?}: auth needs {what}_file or {what}_env",
                        name.value
                    ),
                );
                None
            }
            (f, e, i) => {
                let at = f
                    .map(|x| x.referenced)
                    .or(e.map(|x| x.referenced))
                    .or(i.map(|x| x.referenced))
                    .unwrap_or(*at);
                self.error(
                    &at,
                    format!(
                        "store {:?}: set only one of {what}_file, {what}_env and {what}",
                        name.value
                    ),
                );
                None
            }
        }
    }

    fn vault_auth(&mut self, name: &S<String>, auth: S<RawVaultAuth>) -> Option<VaultAuth> {
        let at = auth.referenced;
        let a = auth.value;
        let method = a.method.value.clone();
        let mut stray: Vec<(&str, Option<S<String>>)> = Vec::new();
        let out = match method.as_str() {
            "token" => {
                stray.extend([
                    ("role_id", a.role_id),
                    ("role_id_file", a.role_id_file),
                    ("secret_id_file", a.secret_id_file),
                    ("role", a.role),
                    ("jwt_file", a.jwt_file),
                    ("mount", a.mount),
                ]);
                self.token_source(name, &at, "token", a.token_file, a.token_env, a.token)
                    .map(VaultAuth::Token)
            }
            "approle" => {
                stray.extend([
                    ("token_file", a.token_file),
                    ("token_env", a.token_env),
                    ("token", a.token),
                    ("role", a.role),
                    ("jwt_file", a.jwt_file),
                ]);
                let role_id = match (a.role_id_file, a.role_id) {
                    (Some(f), None) => Some(TokenSource::File(self.path(&f.value))),
                    // A role id is an identifier, not a secret: inline is fine.
                    (None, Some(r)) => Some(TokenSource::Inline(Secret::new(r.value))),
                    (Some(f), Some(_)) => {
                        self.error(
                            &f.referenced,
                            format!(
                                "store {:?}: set role_id_file or role_id, not both",
                                name.value
                            ),
                        );
                        None
                    }
                    (None, None) => {
                        self.error(
                            &at,
                            format!(
                                "store {:?}: auth method approle needs role_id_file (or role_id)",
                                name.value
                            ),
                        );
                        None
                    }
                };
                let secret_id_file = match a.secret_id_file {
                    Some(f) => Some(self.path(&f.value)),
                    None => {
                        self.error(
                            &at,
                            format!(
                                "store {:?}: auth method approle needs secret_id_file",
                                name.value
                            ),
                        );
                        None
                    }
                };
                let mount = match &a.mount {
                    Some(m) => self.mount_name(name, m, "auth mount"),
                    None => Some("approle".to_owned()),
                };
                match (role_id, secret_id_file, mount) {
                    (Some(role_id), Some(secret_id_file), Some(mount)) => {
                        Some(VaultAuth::AppRole {
                            role_id,
                            secret_id_file,
                            mount,
                        })
                    }
                    _ => None,
                }
            }
            "kubernetes" => {
                stray.extend([
                    ("token_file", a.token_file),
                    ("token_env", a.token_env),
                    ("token", a.token),
                    ("role_id", a.role_id),
                    ("role_id_file", a.role_id_file),
                    ("secret_id_file", a.secret_id_file),
                ]);
                let role = match a.role {
                    Some(r) if !r.value.trim().is_empty() => Some(r.value),
                    Some(r) => {
                        self.error(
                            &r.referenced,
                            format!("store {:?}: auth role is empty", name.value),
                        );
                        None
                    }
                    None => {
                        self.error(
                            &at,
                            format!(
                                "store {:?}: auth method kubernetes needs `role`",
                                name.value
                            ),
                        );
                        None
                    }
                };
                let jwt_file = a.jwt_file.map(|f| self.path(&f.value)).unwrap_or_else(|| {
                    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
                });
                let mount = match &a.mount {
                    Some(m) => self.mount_name(name, m, "auth mount"),
                    None => Some("kubernetes".to_owned()),
                };
                match (role, mount) {
                    (Some(role), Some(mount)) => Some(VaultAuth::Kubernetes {
                        role,
                        jwt_file,
                        mount,
                    }),
                    _ => None,
                }
            }
            other => {
                self.error(&a.method.referenced, format!("store {:?}: unknown auth method {other:?}; expected token, approle or kubernetes", name.value));
                return None;
            }
        };
        for (key, v) in stray {
            if let Some(v) = v {
                self.error(
                    &v.referenced,
                    format!(
                        "store {:?}: `{key}` does not apply to auth method {method}",
                        name.value
                    ),
                );
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn account(
        &mut self,
        name: &S<String>,
        acc: RawAccount,
        defaults: &Defaults,
        databases: &BTreeMap<String, Database>,
        stores: &BTreeMap<String, StoreConfig>,
        tz: Tz,
    ) -> Option<Account> {
        let at = name.referenced;
        let n = name.value.clone();
        let errors_before = self.error_count();
        if !is_account_name(&n) {
            self.error(&at, format!("account name {n:?} must match {ACCOUNT_NAME_RULE} (it is also the database role's name)"));
        }
        if self.unsupported.contains(&acc.database.value) {
            // Already reported where the database is defined.
        } else if !databases.contains_key(&acc.database.value) {
            self.error(
                &acc.database.referenced,
                format!(
                    "account {n:?}: unknown database {:?}; defined databases: {}",
                    acc.database.value,
                    list(databases.keys())
                ),
            );
        }
        let engine = databases
            .get(&acc.database.value)
            .map(|d| d.engine)
            .unwrap_or(EngineKind::Postgres);
        for (field, val) in [("purpose", &acc.purpose), ("owner", &acc.owner)] {
            match val {
                Some(v) if v.value.trim().is_empty() => self.error(
                    &v.referenced,
                    format!("account {n:?}: `{field}` must not be empty"),
                ),
                Some(_) => {}
                None => self.policy(&at, format!("account {n:?}: `{field}` is required")),
            }
        }

        // Strategy and its own fields.
        let strategy_text = acc.strategy.as_ref().or(defaults.strategy.as_ref());
        let strategy = match strategy_text.map(|s| (s.value.as_str(), s.referenced)) {
            None | Some(("ephemeral", _)) => Some(Strategy::Ephemeral),
            Some(("alternating", _)) => Some(Strategy::Alternating),
            Some(("static", sat)) => match &acc.role {
                Some(role) => {
                    if role.value == n {
                        self.error(&role.referenced, format!("account {n:?}: the static role must differ from the account name, which is the account's scoped role"));
                    } else if let Some(p) = identifier_problem(&role.value) {
                        self.error(
                            &role.referenced,
                            format!("account {n:?}: role {:?} {p}", role.value),
                        );
                    }
                    Some(Strategy::Static {
                        role: role.value.clone(),
                        adopt: acc.adopt.as_ref().is_some_and(|a| a.value),
                    })
                }
                None => {
                    self.error(
                        &sat,
                        format!("account {n:?}: strategy static needs `role: <existing role>`"),
                    );
                    None
                }
            },
            Some((other, sat)) => {
                self.error(&sat, format!("account {n:?}: unknown strategy {other:?}; expected ephemeral, alternating or static"));
                None
            }
        };
        if !matches!(strategy, Some(Strategy::Static { .. }) | None) {
            if let Some(role) = &acc.role {
                self.error(
                    &role.referenced,
                    format!("account {n:?}: `role` only applies to strategy static"),
                );
            }
            if let Some(adopt) = &acc.adopt {
                self.error(
                    &adopt.referenced,
                    format!("account {n:?}: `adopt` only applies to strategy static"),
                );
            }
        }

        // Schedule, overlap, lifetime.
        let schedule = match acc.schedule.as_ref().or(defaults.schedule.as_ref()) {
            None => {
                self.error(
                    &at,
                    format!("account {n:?}: no schedule (set `schedule` here or in `defaults`)"),
                );
                None
            }
            Some(s) => match Schedule::parse(&s.value, tz) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.error(&s.referenced, format!("account {n:?}: invalid cron expression {:?}: {e}; expected e.g. \"0 0 */6 * * *\" (with a seconds field)", s.value));
                    None
                }
            },
        };
        let overlap_src = acc.overlap.as_ref().or(defaults.overlap.as_ref());
        let overlap = match overlap_src {
            Some(o) => self.duration(o, "overlap"),
            None => Some(Duration::from_secs(3600)),
        };
        let expiry_margin = match acc
            .expiry_margin
            .as_ref()
            .or(defaults.expiry_margin.as_ref())
        {
            Some(m) => self.duration(m, "expiry_margin"),
            None => Some(Duration::from_secs(3600)),
        };
        let lifetime = match &acc.lifetime {
            Some(l) => self.duration(l, "lifetime").map(Some),
            None => Some(None),
        };
        let max_lifetime_src = acc.max_lifetime.as_ref().or(defaults.max_lifetime.as_ref());
        let max_lifetime = match max_lifetime_src {
            Some(m) => self.duration(m, "max_lifetime"),
            None => Some(PRODUCTION_MAX_LIFETIME),
        };
        if let (Some(m), Some(src)) = (max_lifetime, max_lifetime_src) {
            if m > PRODUCTION_MAX_LIFETIME {
                self.policy(
                    &src.referenced,
                    format!(
                        "account {n:?}: max_lifetime {} exceeds 7 days",
                        humantime::format_duration(m)
                    ),
                );
            }
        }
        // A bad overlap is already reported; go on with zero to find other errors
        // (the account is not built when any error was found).
        let overlap_valid = overlap.is_some();
        let mut overlap = overlap.unwrap_or(Duration::ZERO);
        // MySQL 8 keeps the old password beside the new one (RETAIN CURRENT
        // PASSWORD) for a real overlap; PostgreSQL and MariaDB have one password.
        if matches!(strategy, Some(Strategy::Static { .. })) && engine != EngineKind::Mysql {
            let written_zero = acc.overlap.as_ref().is_some_and(|_| overlap.is_zero());
            if !written_zero {
                let server = if engine == EngineKind::Mariadb {
                    "MariaDB"
                } else {
                    "PostgreSQL"
                };
                self.policy(
                    overlap_src.map(|o| &o.referenced).unwrap_or(&at),
                    format!("account {n:?}: strategy static has no overlap on {server} (the old password stops working at once); write `overlap: 0` to acknowledge it"),
                );
            }
            overlap = Duration::ZERO;
        }
        if let (Some(schedule), Some(margin), Some(lifetime), true) =
            (&schedule, expiry_margin, lifetime, overlap_valid)
        {
            let now = Utc::now();
            let sched_at = acc
                .schedule
                .as_ref()
                .or(defaults.schedule.as_ref())
                .map(|s| s.referenced)
                .unwrap_or(at);
            let max = schedule.max_interval(now, 64);
            let min = min_interval(schedule, now, 64);
            if let Some(min) = min {
                if overlap >= min && !overlap.is_zero() {
                    self.error(
                        overlap_src.map(|o| &o.referenced).unwrap_or(&sched_at),
                        format!(
                            "account {n:?}: overlap {} is not shorter than the schedule's shortest interval {}; at most two credentials may be valid at once",
                            humantime::format_duration(overlap),
                            humantime::format_duration(min)
                        ),
                    );
                }
            }
            if let Some(max) = max {
                let needed = max + overlap;
                let effective = lifetime.unwrap_or(max + overlap + margin);
                if let (Some(l), Some(lsrc)) = (lifetime, &acc.lifetime) {
                    if l < needed {
                        self.error(
                            &lsrc.referenced,
                            format!(
                                "account {n:?}: lifetime {} cannot cover the schedule interval plus the overlap ({})",
                                humantime::format_duration(l),
                                humantime::format_duration(needed)
                            ),
                        );
                    }
                }
                if effective > PRODUCTION_MAX_LIFETIME {
                    let lat = acc
                        .lifetime
                        .as_ref()
                        .map(|l| l.referenced)
                        .unwrap_or(sched_at);
                    self.policy(
                        &lat,
                        format!(
                            "account {n:?}: credential lifetime {} exceeds 7 days",
                            humantime::format_duration(effective)
                        ),
                    );
                }
            }
        }

        // Grants.
        let allow_ddl = acc.allow_ddl.as_ref().is_some_and(|a| a.value);
        let mut grants = Vec::new();
        for g in acc.grants {
            if let Some(g) = self.grant(&n, g, allow_ddl, engine) {
                grants.push(g);
            }
        }
        let mut member_of = Vec::new();
        for m in acc.member_of {
            if let Some(p) = identifier_problem(&m.value) {
                self.error(
                    &m.referenced,
                    format!("account {n:?}: member_of role {:?} {p}", m.value),
                );
            } else if m.value == n || m.value.eq_ignore_ascii_case("public") {
                self.error(
                    &m.referenced,
                    format!("account {n:?}: cannot be a member of {:?}", m.value),
                );
            } else if DANGEROUS_MEMBERSHIPS.contains(&m.value.as_str()) {
                self.policy(
                    &m.referenced,
                    format!(
                        "account {n:?}: membership in {} grants far more than least privilege",
                        m.value
                    ),
                );
                member_of.push(m.value);
            } else if member_of.contains(&m.value) {
                self.warn(
                    &m.referenced,
                    format!("account {n:?}: member_of lists {:?} twice", m.value),
                );
            } else {
                member_of.push(m.value);
            }
        }
        let mut settings = BTreeMap::new();
        if engine.is_mysql() {
            if let Some((k, _)) = acc.settings.0.first() {
                self.error(&k.referenced, format!("account {n:?}: `settings` apply to PostgreSQL only (MySQL and MariaDB have no per-role session variables)"));
            }
        }
        for (k, v) in acc.settings.0 {
            if !is_setting_name(&k.value) {
                self.error(&k.referenced, format!("account {n:?}: setting name {:?} is not a valid parameter name (e.g. app.tenant_id)", k.value));
            } else if FORBIDDEN_SETTINGS.contains(&k.value.as_str()) {
                self.error(
                    &k.referenced,
                    format!(
                        "account {n:?}: setting {:?} cannot be set per account (credrotd manages `role`; list-valued and superuser-only settings are refused)",
                        k.value
                    ),
                );
            } else if v.value.contains('\0') {
                self.error(
                    &v.referenced,
                    format!("account {n:?}: setting {:?} contains a NUL byte", k.value),
                );
            } else {
                settings.insert(k.value, v.value);
            }
        }
        let connection_limit = match acc.connection_limit {
            Some(c) if c.value < -1 || c.value == 0 => {
                self.error(&c.referenced, format!("account {n:?}: connection_limit must be positive (or -1 for no limit), found {}", c.value));
                None
            }
            Some(c) if c.value == -1 => None,
            Some(c) => Some(c.value),
            None => None,
        };

        // Stores.
        let store_names = match (&acc.store, &defaults.store) {
            (Some(s), _) => Spanned::new(
                match &s.value {
                    raw::OneOrMany::One(x) => vec![x.clone()],
                    raw::OneOrMany::Many(v) => v.clone(),
                },
                s.referenced,
                s.defined,
            ),
            (None, Some(d)) => d.clone(),
            (None, None) => {
                self.error(
                    &at,
                    format!("account {n:?}: no store (set `store` here or in `defaults`)"),
                );
                Spanned::new(Vec::new(), at, at)
            }
        };
        let mut store_list = Vec::new();
        for s in &store_names.value {
            if self.unsupported.contains(s) {
                // Already reported where the store is defined.
            } else if !stores.contains_key(s) {
                self.error(
                    &store_names.referenced,
                    format!(
                        "account {n:?}: unknown store {s:?}; defined stores: {}",
                        list(stores.keys())
                    ),
                );
            } else if !store_list.contains(s) {
                store_list.push(s.clone());
            }
        }
        if store_names.value.is_empty() && acc.store.is_some() {
            self.error(
                &store_names.referenced,
                format!("account {n:?}: `store` lists no store"),
            );
        }
        let path = match &acc.path {
            Some(p) if p.value.trim().is_empty() || p.value.contains("..") => {
                self.error(
                    &p.referenced,
                    format!(
                        "account {n:?}: path {:?} must be non-empty and must not contain \"..\"",
                        p.value
                    ),
                );
                String::new()
            }
            Some(p) => p.value.trim_matches('/').to_owned(),
            None => format!("database/{}/{}", acc.database.value, n),
        };
        for s in &store_list {
            let Some(st) = stores.get(s) else { continue };
            let path_at = acc.path.as_ref().map(|p| p.referenced).unwrap_or(at);
            match &st.kind {
                StoreKind::Vault(_)
                    if !path.is_empty()
                        && !path
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_./@".contains(c)) =>
                {
                    self.error(&path_at, format!("account {n:?}: path {path:?} is not a Vault path for store {s:?} (letters, digits, - _ . / @)"));
                }
                StoreKind::Aws(_) => {
                    if !path.is_empty()
                        && (path.len() > 512
                            || !path
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c)))
                    {
                        self.error(&path_at, format!("account {n:?}: path {path:?} is not an AWS secret name for store {s:?} (at most 512 of letters, digits, / _ + = . @ -)"));
                    }
                    if let Some(min) = schedule
                        .as_ref()
                        .and_then(|sch| min_interval(sch, Utc::now(), 64))
                    {
                        if min < AWS_MIN_WRITE_INTERVAL {
                            let sched_at = acc
                                .schedule
                                .as_ref()
                                .or(defaults.schedule.as_ref())
                                .map(|x| x.referenced)
                                .unwrap_or(at);
                            self.warn(&sched_at, format!("account {n:?}: the schedule writes secret {path:?} of store {s:?} every {}; AWS advises at most about once per 10 minutes (throttling, version quota)", humantime::format_duration(min)));
                        }
                    }
                }
                _ => {}
            }
        }
        let revoke = match acc.revoke {
            Some(r) => RevokePolicy {
                terminate_sessions: r.terminate_sessions.is_none_or(|t| t.value),
                grace: match &r.grace {
                    Some(g) => self.duration(g, "revoke.grace").unwrap_or_default(),
                    None => Duration::ZERO,
                },
            },
            None => RevokePolicy {
                terminate_sessions: true,
                grace: Duration::ZERO,
            },
        };
        let notify = match acc.notify {
            None => Notify::default(),
            Some(raw) => self.notify(&n, raw),
        };
        if engine.is_mysql() {
            let max = engine.max_name_len();
            let server = if engine == EngineKind::Mysql {
                "MySQL"
            } else {
                "MariaDB"
            };
            let hint = if engine == EngineKind::Mysql {
                " (MariaDB takes 80: write `engine: mariadb` if the server is MariaDB)"
            } else {
                ""
            };
            // The longest name the strategy creates or manages, what it is and
            // where it comes from; the scoped role is the account name itself.
            let shorter = "; use a shorter account name";
            let names: Vec<(String, &str, Location, &str)> = match &strategy {
                Some(Strategy::Ephemeral) => {
                    vec![(format!("{n}_YYYYMMDDHHMMSS"), "login name", at, shorter)]
                }
                Some(Strategy::Alternating) => vec![(format!("{n}_a"), "login name", at, shorter)],
                Some(Strategy::Static { role, .. }) => vec![
                    (n.clone(), "scoped role", at, shorter),
                    (
                        role.clone(),
                        "static user",
                        acc.role.as_ref().map(|r| r.referenced).unwrap_or(at),
                        "",
                    ),
                ],
                None => Vec::new(),
            };
            for (name, what, name_at, fix) in names {
                let len = name.chars().count();
                if len > max {
                    self.error(&name_at, format!("account {n:?}: {what} {name:?} would be {len} characters, longer than the {max} {server} allows{hint}{fix}"));
                }
            }
        }
        if self.error_count() > errors_before {
            return None;
        }
        Some(Account {
            notify,
            name: n,
            database: acc.database.value,
            purpose: acc.purpose.map(|p| p.value),
            owner: acc.owner.map(|o| o.value),
            strategy: strategy?,
            schedule: schedule?,
            overlap,
            expiry_margin: expiry_margin?,
            lifetime: lifetime?,
            max_lifetime: max_lifetime?,
            grants,
            member_of,
            settings,
            connection_limit,
            stores: store_list,
            path,
            allow_ddl,
            revoke,
        })
    }

    fn notify(&mut self, account: &str, raw: raw::RawNotify) -> Notify {
        let mut out = Notify {
            timeout: Duration::from_secs(30),
            ..Notify::default()
        };
        if let Some(exec) = raw.exec {
            if exec.value.is_empty() || exec.value[0].trim().is_empty() {
                self.error(
                    &exec.referenced,
                    format!("account {account:?}: notify.exec needs a command"),
                );
            } else {
                out.exec = Some(exec.value);
            }
        }
        if let Some(sig) = raw.signal {
            let name = sig
                .signal
                .as_ref()
                .map(|s| s.value.to_ascii_uppercase())
                .unwrap_or_else(|| "HUP".into());
            let full = if name.starts_with("SIG") {
                name.clone()
            } else {
                format!("SIG{name}")
            };
            match full.parse::<nix::sys::signal::Signal>() {
                Ok(signal) => out.signal = Some((self.path(&sig.pid_file.value), signal)),
                Err(_) => {
                    let at = sig
                        .signal
                        .as_ref()
                        .map(|s| s.referenced)
                        .unwrap_or(sig.pid_file.referenced);
                    self.error(&at, format!("account {account:?}: unknown signal {name:?}; expected e.g. HUP, USR1, USR2, TERM"));
                }
            }
        }
        if let Some(t) = raw
            .timeout
            .as_ref()
            .and_then(|t| self.duration(t, "notify.timeout"))
        {
            out.timeout = t;
        }
        out
    }

    fn grant(
        &mut self,
        account: &str,
        g: RawGrant,
        allow_ddl: bool,
        engine: EngineKind,
    ) -> Option<Grant> {
        if let Some(p) = identifier_problem(&g.schema.value) {
            self.error(
                &g.schema.referenced,
                format!("account {account:?}: schema {:?} {p}", g.schema.value),
            );
            return None;
        }
        let mysql = engine.is_mysql();
        if let (true, Some(seq)) = (mysql, &g.sequences) {
            self.error(&seq.referenced, format!("account {account:?}: MySQL and MariaDB have no sequence privileges (a MariaDB sequence is a table: list it under `tables`)"));
            return None;
        }
        if let (false, Some(pr)) = (mysql, &g.procedures) {
            self.error(&pr.referenced, format!("account {account:?}: `procedures` applies to MySQL and MariaDB; on PostgreSQL list procedures under `functions`"));
            return None;
        }
        let targets: Vec<(ObjectKind, &S<ObjectList>)> = [
            (ObjectKind::Table, g.tables.as_ref()),
            (ObjectKind::Sequence, g.sequences.as_ref()),
            (ObjectKind::Function, g.functions.as_ref()),
            (ObjectKind::Procedure, g.procedures.as_ref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        let (kind, objects) = match targets.as_slice() {
            [] => (ObjectKind::Schema, None),
            [(kind, list)] => {
                let objects = match &list.value {
                    ObjectList::Star(s) if s == "*" => Objects::All,
                    ObjectList::Star(s) => {
                        self.error(&list.referenced, format!("account {account:?}: {}: expected \"*\" or a list of names, found {s:?}", kind.as_str()));
                        return None;
                    }
                    ObjectList::Names(names) if names.is_empty() => {
                        self.error(
                            &list.referenced,
                            format!("account {account:?}: {}: the list is empty", kind.as_str()),
                        );
                        return None;
                    }
                    ObjectList::Names(names) => {
                        for name in names {
                            if let Some(p) = identifier_problem(name) {
                                self.error(
                                    &list.referenced,
                                    format!(
                                        "account {account:?}: {} name {name:?} {p}",
                                        kind.as_str()
                                    ),
                                );
                                return None;
                            }
                        }
                        Objects::Named(names.clone())
                    }
                };
                (*kind, Some(objects))
            }
            [_, (_, second), ..] => {
                self.error(&second.referenced, format!("account {account:?}: a grant covers one of tables, sequences, functions or procedures; split it into several grants"));
                return None;
            }
        };
        let allowed = kind.privileges_for(engine);
        let mut privileges = BTreeSet::new();
        if g.privileges.value.is_empty() {
            self.error(
                &g.privileges.referenced,
                format!(
                    "account {account:?}: grant on schema {:?} lists no privileges",
                    g.schema.value
                ),
            );
            return None;
        }
        for p in &g.privileges.value {
            // Multi-word privileges (`CREATE VIEW`) match with white space collapsed.
            let upper = p
                .value
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_ascii_uppercase();
            if upper == "ALL" || upper == "ALL PRIVILEGES" {
                self.policy(&p.referenced, format!("account {account:?}: ALL PRIVILEGES is not least privilege; list the privileges needed"));
                privileges.extend(allowed.iter().copied());
            } else if let Some(found) = allowed.iter().find(|a| **a == upper) {
                privileges.insert(*found);
            } else {
                let what = match kind {
                    ObjectKind::Schema => "a schema".to_owned(),
                    k => k.as_str().to_owned(),
                };
                self.error(
                    &p.referenced,
                    format!("account {account:?}: privilege {:?} does not apply to {what}; expected one of {}", p.value, allowed.join(", ")),
                );
                return None;
            }
        }
        let ddl: Vec<&str> = privileges
            .iter()
            .copied()
            .filter(|p| DDL_PRIVILEGES.contains(p) && kind != ObjectKind::Sequence)
            .collect();
        if !ddl.is_empty() && !allow_ddl {
            self.policy(
                &g.privileges.referenced,
                format!("account {account:?}: DDL privileges ({}) need `allow_ddl: true` on the account", ddl.join(", ")),
            );
        }
        Some(Grant {
            schema: g.schema.value,
            kind,
            objects,
            privileges,
        })
    }

    fn error_count(&self) -> usize {
        self.diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }
}

fn min_interval(
    schedule: &Schedule,
    from: chrono::DateTime<Utc>,
    samples: usize,
) -> Option<Duration> {
    let mut prev = schedule.next_after(from)?;
    let mut min: Option<Duration> = None;
    for _ in 0..samples {
        let next = schedule.next_after(prev)?;
        let gap = (next - prev).to_std().ok()?;
        min = Some(min.map_or(gap, |m| m.min(gap)));
        prev = next;
    }
    min
}

/// The login role names an account's strategy uses (besides its scoped role).
fn derived_role_names(acc: &Account) -> Vec<String> {
    let mut names = vec![acc.name.clone()];
    match &acc.strategy {
        Strategy::Alternating => {
            names.push(format!("{}_a", acc.name));
            names.push(format!("{}_b", acc.name));
        }
        Strategy::Static { role, .. } => names.push(role.clone()),
        Strategy::Ephemeral => {}
    }
    names
}

fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let in_userinfo = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let in_query = rest.split_once('?').is_some_and(|(_, q)| {
        q.split('&')
            .any(|kv| kv.split('=').next() == Some("password"))
    });
    in_userinfo || in_query
}

/// `http://localhost...`, `http://127.x...` or `http://[::1]...`.
fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

/// `eu-west-1`, `us-gov-west-1`, `cn-north-1`: lowercase words and a number.
fn is_aws_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
}

fn list<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = keys.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests;
