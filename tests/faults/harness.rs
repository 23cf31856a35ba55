//! The fault-injection harness: the real `credrotd` binary, real servers, and
//! checks made from outside the way a consumer would make them.
//!
//! A [`World`] is one scenario's database, role prefix, ledger directory, Vault
//! policy and token, and the list of accounts with the stores each publishes to.
//! [`World::pass`] is one consumer's look at everything: it reads what every store
//! holds, logs in with it, and counts each account's live logins in the catalog.
//! Anything that breaks an invariant is recorded as a violation (with usernames
//! and versions, never a password) and asserted at the end of the scenario, after
//! the summary line is printed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

use crate::common::TestDb;

// ---- knobs -------------------------------------------------------------------

/// A variable `scripts/test` sets; panics with a clear message when it is missing.
pub fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set. Run the suite with ./scripts/test (e.g. ./scripts/test --test \
             faults), which starts the scram PostgreSQL, OpenBao and moto it needs."
        )
    })
}

/// An integer knob from the environment.
pub fn knob(var: &str, default: u64) -> u64 {
    match std::env::var(var) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={v:?} is not a non-negative integer")),
        Err(_) => default,
    }
}

/// A duration knob in seconds (fractions allowed).
pub fn knob_secs(var: &str, default: f64) -> Duration {
    let secs = match std::env::var(var) {
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("{var}={v:?} is not a number of seconds")),
        Err(_) => default,
    };
    Duration::from_secs_f64(secs)
}

/// Every scenario takes this lock for its whole length: the PostgreSQL restart
/// scenario stops the cluster that all of them use, and the others must not see
/// that as a fault of the daemon. It also keeps the 2-core CI machine from
/// running several daemons of different scenarios at once.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

// ---- accounts and stores -------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Strategy {
    Ephemeral,
    Alternating,
    Static,
}

#[derive(Clone, Debug)]
pub enum StoreKind {
    /// The file store: `<dir>/<account>.json`.
    File(PathBuf),
    /// Vault/OpenBao KV v2 at `secret/<path>`.
    Vault(String),
    /// AWS Secrets Manager (moto), the secret named `<path>`, stage AWSCURRENT.
    Aws(String),
}

#[derive(Clone, Debug)]
pub struct StoreRef {
    /// The store's name in the inventory: local, vault or aws.
    pub name: String,
    pub kind: StoreKind,
}

/// How a scenario declares an account.
pub struct Spec<'a> {
    pub suffix: &'a str,
    pub strategy: Strategy,
    pub schedule: &'a str,
    pub overlap: Duration,
    pub expiry_margin: Duration,
    pub stores: &'a [&'a str],
}

#[derive(Clone, Debug)]
pub struct Acct {
    pub name: String,
    pub strategy: Strategy,
    pub overlap: Duration,
    pub stores: Vec<StoreRef>,
    /// The existing role of a static account.
    pub role: Option<String>,
    /// The account's YAML block under `accounts:`.
    pub yaml: String,
}

/// What a store holds for an account. Never printed: it carries the password.
#[derive(Clone)]
pub struct Doc {
    pub username: String,
    pub password: String,
    pub version: i64,
    pub issued_at: Option<DateTime<Utc>>,
}

impl Doc {
    fn same(&self, other: &Doc) -> bool {
        self.username == other.username && self.password == other.password
    }

    fn label(&self) -> String {
        format!("v{} {}", self.version, self.username)
    }

    fn parse(v: &serde_json::Value) -> Result<Doc, String> {
        let s = |k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("the payload has no string {k:?}"))
        };
        Ok(Doc {
            username: s("username")?,
            password: s("password")?,
            version: v["version"]
                .as_i64()
                .ok_or("the payload has no integer \"version\"")?,
            issued_at: v["issued_at"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
        })
    }
}

/// One role of the catalog that may belong to an account.
#[derive(Clone, Debug)]
pub struct RoleRow {
    pub name: String,
    pub canlogin: bool,
    /// `rolvaliduntil` is NULL or in the future.
    pub valid: bool,
    pub comment: String,
}

// ---- figures -------------------------------------------------------------------

#[derive(Default, Debug)]
pub struct Stats {
    pub kills: u64,
    pub restarts: u64,
    pub pg_restarts: u64,
    /// Distinct (account, store, credential) that a store held and that did not
    /// log in (or a store that lost what it held).
    pub lockouts: u64,
    /// Login roles after the final recovery that the ledger does not know.
    pub orphans: u64,
    /// The most live logins seen at once for one account.
    pub max_live: u64,
    /// Distinct passwords found in a log or the ledger.
    pub leaked: u64,
    /// Two live logins for longer than the overlap (plus tolerance).
    pub overdue: u64,
    /// Ledger entries left in a middle state after the final recovery.
    pub middle: u64,
    /// A refused login that resolved because the store had moved on meanwhile
    /// (or, for static accounts, within the static grace): races, not lockouts.
    pub transient: u64,
    /// Informational: a credential that a store held less than its overlap ago
    /// (so a consumer may still be using it) was refused. The design lets a
    /// rotation cut a predecessor's overlap short, and a rollback takes back a
    /// credential one store already showed; each case is printed.
    pub cut_short: u64,
    /// Kills that came before the daemon was ready (recovery interrupted).
    pub early_kills: u64,
    pub passes: u64,
    pub logins: u64,
}

// ---- the world -----------------------------------------------------------------

pub struct World {
    pub scenario: String,
    pub accounts: Vec<Acct>,
    pub stats: Stats,
    pub violations: Vec<String>,
    /// Every password any store was seen to hold.
    pub secrets: HashSet<String>,
    /// Every credential ever seen per account (to tell a fresh one).
    pub seen: HashMap<String, Vec<Doc>>,
    /// Scheduling slack for the overlap check.
    pub tolerance: Duration,
    /// How long a static account's store may hold a password that was just
    /// replaced (PostgreSQL has no overlap for static roles: the old password
    /// stops at `ALTER ROLE`, the store follows a moment later).
    pub static_grace: Duration,
    pub logs_dir: PathBuf,
    pub token_file: PathBuf,
    policy: String,
    vault: VaultClient,
    sm: aws_sdk_secretsmanager::Client,
    ever_held: HashSet<(String, String)>,
    /// Per account: credentials a store held, with the last time one did.
    last_held: HashMap<String, Vec<(Doc, Instant)>>,
    cut_keys: HashSet<String>,
    lockout_keys: HashSet<String>,
    violation_keys: HashSet<String>,
    suspects: HashMap<String, (String, Instant)>,
    /// The daemons running now (pid, start), to judge overlaps only while one
    /// runs: a stopped daemon cannot retire anything, and only `VALID UNTIL`
    /// (overlap + margin) bounds a predecessor then.
    running: Vec<(u32, Instant)>,
    pg_log_start: u64,
    log_seq: u32,
    remote: Remote,
    // Last: dropped after everything above (the database and its roles).
    pub db: TestDb,
}

pub fn vault_addr() -> String {
    env("CREDROTD_TEST_VAULT_ADDR")
}

pub fn aws_endpoint() -> String {
    env("CREDROTD_TEST_AWS_ENDPOINT")
}

fn root_vault() -> VaultClient {
    let _ = rustls::crypto::ring::default_provider().install_default();
    VaultClient::new(
        VaultClientSettingsBuilder::default()
            .address(vault_addr())
            .token(env("CREDROTD_TEST_VAULT_TOKEN"))
            .build()
            .unwrap(),
    )
    .unwrap()
}

async fn aws_client() -> aws_sdk_secretsmanager::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("eu-west-1"))
        .endpoint_url(aws_endpoint())
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .load()
        .await;
    aws_sdk_secretsmanager::Client::new(&conf)
}

fn vault_policy(prefix: &str, writable: bool) -> String {
    if writable {
        format!(
            "path \"secret/data/{prefix}/*\" {{ capabilities = [\"create\", \"read\", \"update\"] }}\n\
             path \"secret/metadata/{prefix}/*\" {{ capabilities = [\"create\", \"read\", \"update\"] }}\n\
             path \"secret/delete/{prefix}/*\" {{ capabilities = [\"update\"] }}\n"
        )
    } else {
        format!(
            "path \"secret/data/{prefix}/*\" {{ capabilities = [\"read\"] }}\n\
             path \"secret/metadata/{prefix}/*\" {{ capabilities = [\"read\"] }}\n"
        )
    }
}

impl World {
    pub async fn new(scenario: &str) -> World {
        let db = TestDb::new().await;
        let vault = root_vault();
        let sm = aws_client().await;
        let prefix = format!("credrotd-faults/{}", db.tag);
        let policy = format!("credrotd-faults-{}", db.tag);
        vaultrs::sys::policy::set(&vault, &policy, &vault_policy(&prefix, true))
            .await
            .expect("create the Vault policy (is OpenBao up?)");
        let mut req = vaultrs::api::token::requests::CreateTokenRequest::builder();
        req.policies(vec![policy.clone()]).ttl("4h");
        let token = vaultrs::token::new(&vault, Some(&mut req))
            .await
            .expect("create a Vault token")
            .client_token;
        let token_file = db.dir.path().join("vault-token");
        std::fs::write(&token_file, token).unwrap();
        let logs_dir = db.dir.path().join("logs");
        std::fs::create_dir_all(&logs_dir).unwrap();
        let pg_log_start = std::fs::metadata(pg_log()).map(|m| m.len()).unwrap_or(0);
        let remote = Remote {
            vault_paths: Vec::new(),
            aws_names: Vec::new(),
            policies: vec![policy.clone()],
        };
        println!(
            "faults[{scenario}]: tag {} database {} dir {}",
            db.tag,
            db.dbname,
            db.dir.path().display()
        );
        World {
            scenario: scenario.to_owned(),
            accounts: Vec::new(),
            stats: Stats::default(),
            violations: Vec::new(),
            secrets: HashSet::new(),
            seen: HashMap::new(),
            tolerance: knob_secs("CREDROTD_FAULT_TOLERANCE", 3.0),
            static_grace: knob_secs("CREDROTD_FAULT_STATIC_GRACE", 2.0),
            logs_dir,
            token_file,
            policy,
            vault,
            sm,
            ever_held: HashSet::new(),
            last_held: HashMap::new(),
            cut_keys: HashSet::new(),
            lockout_keys: HashSet::new(),
            violation_keys: HashSet::new(),
            suspects: HashMap::new(),
            running: Vec::new(),
            pg_log_start,
            log_seq: 0,
            remote,
            db,
        }
    }

    /// The Vault/AWS path of an account of this scenario.
    pub fn path(&self, suffix: &str) -> String {
        format!("credrotd-faults/{}/{suffix}", self.db.tag)
    }

    /// Declares an account (and creates a static account's existing role).
    pub async fn add(&mut self, spec: Spec<'_>) -> Acct {
        let name = self.db.name(spec.suffix);
        let path = self.path(spec.suffix);
        let mut stores = Vec::new();
        for s in spec.stores {
            let kind = match *s {
                "local" => StoreKind::File(self.db.secrets_dir()),
                "vault" => {
                    self.remote.vault_paths.push(path.clone());
                    StoreKind::Vault(path.clone())
                }
                "aws" => {
                    self.remote.aws_names.push(path.clone());
                    StoreKind::Aws(path.clone())
                }
                other => panic!("unknown store {other}"),
            };
            stores.push(StoreRef {
                name: (*s).to_owned(),
                kind,
            });
        }
        let (strategy, role) = match spec.strategy {
            Strategy::Ephemeral => ("ephemeral".to_owned(), None),
            Strategy::Alternating => ("alternating".to_owned(), None),
            Strategy::Static => {
                let role = format!("{name}_legacy");
                // An existing login role without a password: nothing secret in
                // the statement log, and nobody can log in until credrotd sets one.
                self.db.exec(&format!("CREATE ROLE \"{role}\" LOGIN")).await;
                (format!("static\n    role: {role}"), Some(role))
            }
        };
        let yaml = format!(
            "  {name}:\n    database: main\n    strategy: {strategy}\n    schedule: \"{sched}\"\n    \
             overlap: {overlap}\n    expiry_margin: {margin}\n    store: [{stores}]\n    path: {path}\n    \
             grants:\n      - {{ schema: public, privileges: [USAGE] }}\n",
            sched = spec.schedule,
            overlap = humantime::format_duration(spec.overlap),
            margin = humantime::format_duration(spec.expiry_margin),
            stores = spec.stores.join(", "),
        );
        let acct = Acct {
            name,
            strategy: spec.strategy,
            overlap: spec.overlap,
            stores,
            role,
            yaml,
        };
        self.accounts.push(acct.clone());
        acct
    }

    /// Writes an inventory with every account of the world (or `only` these),
    /// its ledger at `ledger` and its admin socket at `socket`.
    pub fn write_inventory(&self, file: &str, ledger: &Path, socket: &Path) -> PathBuf {
        let accounts: String = self.accounts.iter().map(|a| a.yaml.as_str()).collect();
        let text = format!(
            "version: 1\nenvironment: development\nstate: sqlite://{ledger}\n\
             admin: {{ socket: {socket}, allow_uids: [{uid}] }}\n\
             rotation: {{ concurrency: 8, retry_initial: 1s, retry_max: 5s }}\n\
             defaults: {{ schedule: \"0 0 3 * * *\", overlap: 1h, expiry_margin: 1h, store: local }}\n\
             databases:\n  main:\n    engine: postgres\n    url: {url}\n    password_file: {pw}\n\
             stores:\n  local: {{ kind: file, dir: {secrets}, mode: \"0400\" }}\n  \
             vault: {{ kind: vault, address: \"{vault}\", mount: secret, auth: {{ method: token, token_file: {token} }} }}\n  \
             aws: {{ kind: aws_secrets_manager, region: eu-west-1, endpoint: \"{aws}\" }}\n\
             accounts:\n{accounts}",
            ledger = ledger.display(),
            socket = socket.display(),
            uid = nix::unistd::geteuid().as_raw(),
            url = self.db.url,
            pw = self.db.password_file.display(),
            secrets = self.db.secrets_dir().display(),
            vault = vault_addr(),
            token = self.token_file.display(),
            aws = aws_endpoint(),
        );
        let p = self.db.dir.path().join(file);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Starts `credrotd run` with its own log file (trace level, JSON).
    pub fn start(&mut self, inventory: &Path, socket: &Path, label: &str) -> Daemon {
        self.log_seq += 1;
        let log = self
            .logs_dir
            .join(format!("{:04}-{label}.log", self.log_seq));
        let d = Daemon::start(inventory, socket, log);
        self.running.push((d.child.id(), d.started));
        d
    }

    fn forget(&mut self, d: &Daemon) {
        let pid = d.child.id();
        self.running.retain(|(p, _)| *p != pid);
    }

    /// kill -9.
    pub fn kill9(&mut self, d: Daemon) {
        self.forget(&d);
        d.kill9();
        self.stats.kills += 1;
    }

    /// Sets the daemon's Vault policy to read-write or read-only.
    pub async fn vault_writable(&self, writable: bool) {
        let prefix = format!("credrotd-faults/{}", self.db.tag);
        vaultrs::sys::policy::set(&self.vault, &self.policy, &vault_policy(&prefix, writable))
            .await
            .expect("change the Vault policy");
    }

    /// Records a violation once per key; true when it is new.
    pub fn violation(&mut self, key: &str, message: String) -> bool {
        if self.violation_keys.insert(key.to_owned()) {
            println!("faults[{}]: VIOLATION {message}", self.scenario);
            self.violations.push(message);
            true
        } else {
            false
        }
    }

    fn lockout(&mut self, acct: &Acct, store: &StoreRef, held: &str, why: &str) {
        let key = format!("{}/{}/{held}", acct.name, store.name);
        if self.lockout_keys.insert(key.clone()) {
            self.stats.lockouts += 1;
            let _ = self.violation(
                &format!("lockout {key}"),
                format!(
                    "lockout: account {} ({:?}) store {}: holds {held}: {why}",
                    acct.name, acct.strategy, store.name
                ),
            );
        }
    }

    // ---- reading the stores ----

    pub async fn fetch(&self, acct: &Acct, store: &StoreRef) -> Result<Option<Doc>, String> {
        match &store.kind {
            StoreKind::File(dir) => {
                let p = dir.join(format!("{}.json", acct.name));
                match std::fs::read(&p) {
                    Ok(b) => {
                        let v: serde_json::Value = serde_json::from_slice(&b)
                            .map_err(|e| format!("{} is not JSON: {e}", p.display()))?;
                        Doc::parse(&v).map(Some)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(format!("{}: {e}", p.display())),
                }
            }
            StoreKind::Vault(path) => {
                match vaultrs::kv2::read::<serde_json::Value>(&self.vault, "secret", path).await {
                    Ok(v) => Doc::parse(&v).map(Some),
                    Err(vaultrs::error::ClientError::APIError { code: 404, .. }) => Ok(None),
                    Err(e) => Err(format!("vault read {path}: {e}")),
                }
            }
            StoreKind::Aws(name) => {
                let r = self
                    .sm
                    .get_secret_value()
                    .secret_id(name)
                    .version_stage("AWSCURRENT")
                    .send()
                    .await;
                match r {
                    Ok(v) => {
                        let text = v.secret_string().ok_or("no SecretString")?;
                        let v: serde_json::Value = serde_json::from_str(text)
                            .map_err(|e| format!("aws {name} is not JSON: {e}"))?;
                        Doc::parse(&v).map(Some)
                    }
                    Err(e) => {
                        if e.as_service_error()
                            .is_some_and(|s| s.is_resource_not_found_exception())
                        {
                            Ok(None)
                        } else {
                            Err(format!(
                                "aws get {name}: {}",
                                aws_sdk_secretsmanager::error::DisplayErrorContext(&e)
                            ))
                        }
                    }
                }
            }
        }
    }

    async fn try_login(&mut self, doc: &Doc) -> Login {
        self.stats.logins += 1;
        let r = tokio::time::timeout(
            Duration::from_secs(15),
            self.db.login(&doc.username, &doc.password),
        )
        .await;
        match r {
            Err(_) => Login::Unreachable("login timed out".into()),
            Ok(Err(e)) => classify(e),
            Ok(Ok(mut c)) => {
                let q = sqlx::query("SELECT 1").execute(&mut c).await;
                let _ = c.close().await;
                match q {
                    Ok(_) => Login::Ok,
                    Err(e) => classify(e),
                }
            }
        }
    }

    /// What one store holds for one account, checked by logging in with it.
    /// Returns the document when it logs in.
    async fn check_store(
        &mut self,
        acct: &Acct,
        store: &StoreRef,
        ok: &mut HashSet<(String, String)>,
    ) -> Option<Doc> {
        let key = (acct.name.clone(), store.name.clone());
        let start = Instant::now();
        // The credential that was refused first, and how often the store moved on.
        let mut refused: Option<Doc> = None;
        let mut moves = 0;
        loop {
            let doc = match self.fetch(acct, store).await {
                Ok(d) => d,
                Err(e) => {
                    if start.elapsed() > Duration::from_secs(30) {
                        self.violation(
                            &format!("unreadable {}/{}", acct.name, store.name),
                            format!("store {} unreadable for 30 s: {e}", store.name),
                        );
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let Some(doc) = doc else {
                if self.ever_held.contains(&key) {
                    self.lockout(acct, store, "nothing", "the store held a credential before");
                }
                return None;
            };
            self.secrets.insert(doc.password.clone());
            self.ever_held.insert(key.clone());
            let seen = self.seen.entry(acct.name.clone()).or_default();
            if !seen.iter().any(|d| d.same(&doc)) {
                seen.push(doc.clone());
            }
            let cred = (doc.username.clone(), doc.password.clone());
            let result = if ok.contains(&cred) {
                Login::Ok
            } else {
                self.try_login(&doc).await
            };
            match result {
                Login::Ok => {
                    ok.insert(cred);
                    let held = self.last_held.entry(acct.name.clone()).or_default();
                    match held.iter_mut().find(|(d, _)| d.same(&doc)) {
                        Some(entry) => entry.1 = Instant::now(),
                        None => held.push((doc.clone(), Instant::now())),
                    }
                    if let Some(r) = &refused {
                        self.stats.transient += 1;
                        println!(
                            "faults[{}]: transient: account {} ({:?}) store {}: {} was refused, then {} logged in ({} ms)",
                            self.scenario,
                            acct.name,
                            acct.strategy,
                            store.name,
                            r.label(),
                            doc.label(),
                            start.elapsed().as_millis()
                        );
                    }
                    return Some(doc);
                }
                Login::Unreachable(e) => {
                    if start.elapsed() > Duration::from_secs(90) {
                        panic!("PostgreSQL unreachable for 90 s: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Login::Refused(msg) => match &refused {
                    None => {
                        // Read the store again: it may have moved on between the
                        // read and the login (a rollback, a promotion).
                        refused = Some(doc);
                        if acct.strategy == Strategy::Static {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    Some(first) if !first.same(&doc) => {
                        moves += 1;
                        refused = Some(doc.clone());
                        if moves > 5 {
                            self.lockout(acct, store, &doc.label(), &msg);
                            return None;
                        }
                    }
                    Some(_) => {
                        if acct.strategy == Strategy::Static && start.elapsed() < self.static_grace
                        {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        self.lockout(acct, store, &doc.label(), &msg);
                        return None;
                    }
                },
            }
        }
    }

    /// Every role that might belong to one of this world's accounts.
    pub async fn catalog(&mut self) -> Vec<RoleRow> {
        let start = Instant::now();
        loop {
            match self.try_catalog().await {
                Ok(rows) => return rows,
                Err(e) => {
                    if start.elapsed() > Duration::from_secs(90) {
                        panic!("cannot read the catalog for 90 s: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    async fn try_catalog(&self) -> Result<Vec<RoleRow>, sqlx::Error> {
        let pw = std::fs::read_to_string(&self.db.password_file).map_err(sqlx::Error::Io)?;
        let mut c = sqlx::postgres::PgConnectOptions::from_str(&self.db.url)?
            .password(pw.trim_end_matches('\n'))
            .log_statements(log::LevelFilter::Off)
            .connect()
            .await?;
        let rows: Vec<(String, bool, bool, String)> = sqlx::query_as(
            "SELECT r.rolname::text, r.rolcanlogin, \
                    (r.rolvaliduntil IS NULL OR r.rolvaliduntil > now()), \
                    coalesce(shobj_description(r.oid, 'pg_authid'), '') \
             FROM pg_roles r \
             WHERE r.rolname LIKE $1 OR shobj_description(r.oid, 'pg_authid') LIKE 'credrotd:%'",
        )
        .bind(format!("{}%", self.db.tag))
        .fetch_all(&mut c)
        .await?;
        let _ = c.close().await;
        Ok(rows
            .into_iter()
            .map(|(name, canlogin, valid, comment)| RoleRow {
                name,
                canlogin,
                valid,
                comment,
            })
            .collect())
    }

    /// Is this role one of the account's logins (by credrotd's comment or by the
    /// name the strategy gives it)?
    pub fn belongs(acct: &Acct, r: &RoleRow) -> bool {
        let mut words = r.comment.split_whitespace();
        let kind = words.next().unwrap_or("");
        let tagged = matches!(kind, "credrotd:login" | "credrotd:alternating")
            && words.any(|w| w == format!("account={}", acct.name));
        let named = match acct.strategy {
            Strategy::Ephemeral => r
                .name
                .strip_prefix(&format!("{}_", acct.name))
                .is_some_and(|rest| rest.len() == 14 && rest.bytes().all(|b| b.is_ascii_digit())),
            Strategy::Alternating => {
                r.name == format!("{}_a", acct.name) || r.name == format!("{}_b", acct.name)
            }
            Strategy::Static => Some(&r.name) == acct.role.as_ref(),
        };
        tagged || named
    }

    /// One consumer's look at everything: every store of every account logs in,
    /// and no account has more than two live logins (the older one only during
    /// its overlap). Returns what each (account, store) holds.
    pub async fn pass(&mut self) -> HashMap<(String, String), Doc> {
        self.stats.passes += 1;
        let accounts = self.accounts.clone();
        // The catalog is read before the stores: the stores then show the
        // rotation that was in flight when the catalog showed its two logins
        // (or a later one), never an older one. Read after them, a slow pass
        // on a loaded machine paired a rotation finished meanwhile with the
        // stores' stale view and called it an overdue predecessor.
        let now = Utc::now();
        let roles = self.catalog().await;
        let mut held = HashMap::new();
        let mut ok = HashSet::new();
        for a in &accounts {
            for s in &a.stores {
                if let Some(doc) = self.check_store(a, s, &mut ok).await {
                    held.insert((a.name.clone(), s.name.clone()), doc);
                }
            }
        }
        self.overlap_promise(&accounts, &held).await;
        for a in &accounts {
            let live: BTreeSet<String> = roles
                .iter()
                .filter(|r| Self::belongs(a, r) && r.canlogin && r.valid)
                .map(|r| r.name.clone())
                .collect();
            self.stats.max_live = self.stats.max_live.max(live.len() as u64);
            let names = live.iter().cloned().collect::<Vec<_>>().join(",");
            if live.len() > 2 {
                let _ = self.violation(
                    &format!("live {} {names}", a.name),
                    format!(
                        "account {}: {} live logins at once: {names}",
                        a.name,
                        live.len()
                    ),
                );
            }
            // Two live logins: the older may live only until the newer's overlap
            // ends. The newest credential any store holds is the current one (or
            // one being published); its issued_at is no later than its promotion.
            // Judged only while a daemon runs, which gets `tolerance` after its
            // start to retire what became due while none ran; a rotation in
            // flight also shows two logins, so the same pair must be seen again
            // a second later.
            let newest = a
                .stores
                .iter()
                .filter_map(|s| held.get(&(a.name.clone(), s.name.clone())))
                .max_by_key(|d| (d.version, d.issued_at));
            let running_since = self.running.iter().map(|(_, t)| *t).min();
            let due = match (newest.and_then(|d| d.issued_at), running_since) {
                (Some(issued), Some(since)) => {
                    let since =
                        now - chrono::Duration::from_std(since.elapsed()).unwrap_or_default();
                    let end = (issued + chrono::Duration::from_std(a.overlap).unwrap()).max(since);
                    now > end + chrono::Duration::from_std(self.tolerance).unwrap()
                }
                _ => false,
            };
            match (live.len(), newest) {
                (2, Some(cur)) if due => {
                    let key = format!("{names} {}", cur.label());
                    let label = cur.label();
                    let issued = cur.issued_at.unwrap_or(now);
                    match self.suspects.get(&a.name) {
                        Some((k, since)) if *k == key => {
                            if since.elapsed() >= Duration::from_secs(1)
                                && self.violation(
                                    &format!("overdue {} {key}", a.name),
                                    format!(
                                        "account {}: two live logins ({names}) {:.1} s after {label} was issued, overlap {}",
                                        a.name,
                                        (now - issued).num_milliseconds() as f64 / 1000.0,
                                        humantime::format_duration(a.overlap)
                                    ),
                                )
                            {
                                self.stats.overdue += 1;
                            }
                        }
                        _ => {
                            self.suspects.insert(a.name.clone(), (key, Instant::now()));
                        }
                    }
                }
                _ => {
                    self.suspects.remove(&a.name);
                }
            }
        }
        held
    }

    /// A consumer that read a credential keeps using it for up to the overlap:
    /// every credential a store held less than `overlap` - 0.5 s ago and holds
    /// no more is tried again. Refusals are counted as `cut_short` (reported,
    /// not asserted: see [`Stats::cut_short`]).
    async fn overlap_promise(&mut self, accounts: &[Acct], held: &HashMap<(String, String), Doc>) {
        for a in accounts {
            if a.strategy == Strategy::Static || a.overlap < Duration::from_secs(1) {
                continue;
            }
            let window = a.overlap - Duration::from_millis(500);
            let entries = self.last_held.remove(&a.name).unwrap_or_default();
            let mut keep = Vec::new();
            for (doc, last) in entries {
                if last.elapsed() >= window {
                    continue;
                }
                let still_held = a.stores.iter().any(|s| {
                    held.get(&(a.name.clone(), s.name.clone()))
                        .is_some_and(|d| d.same(&doc))
                });
                let key = format!("{} {}", a.name, doc.label());
                if !still_held && !self.cut_keys.contains(&key) {
                    if let Login::Refused(msg) = self.try_login(&doc).await {
                        self.cut_keys.insert(key);
                        self.stats.cut_short += 1;
                        println!(
                            "faults[{}]: cut short: account {} {} refused {} ms after a store last held it (overlap {}): {msg}",
                            self.scenario,
                            a.name,
                            doc.label(),
                            last.elapsed().as_millis(),
                            humantime::format_duration(a.overlap)
                        );
                    }
                }
                keep.push((doc, last));
            }
            self.last_held.insert(a.name.clone(), keep);
        }
    }

    /// Runs passes for `d` while the daemon stays alive.
    pub async fn passes_for(&mut self, daemon: &mut Daemon, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.expect_alive(daemon);
            self.pass().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Passes until every store of every account holds a credential.
    pub async fn wait_all_held(&mut self, daemon: &mut Daemon, limit: Duration) {
        let start = Instant::now();
        loop {
            self.expect_alive(daemon);
            let held = self.pass().await;
            let missing: Vec<String> = self
                .accounts
                .iter()
                .flat_map(|a| a.stores.iter().map(move |s| (a, s)))
                .filter(|(a, s)| !held.contains_key(&(a.name.clone(), s.name.clone())))
                .map(|(a, s)| format!("{}@{}", a.name, s.name))
                .collect();
            if missing.is_empty() {
                return;
            }
            if start.elapsed() > limit {
                let log = self.tail(&daemon.log, 40);
                panic!(
                    "faults[{}]: no credential in {missing:?} after {limit:?}; daemon log {}:\n{log}",
                    self.scenario,
                    daemon.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every credential seen so far, per account.
    pub fn mark(&self) -> HashMap<String, Vec<Doc>> {
        self.seen.clone()
    }

    /// Accounts whose stores do not all hold a credential absent from `mark`.
    pub fn not_fresh(
        &self,
        held: &HashMap<(String, String), Doc>,
        mark: &HashMap<String, Vec<Doc>>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for a in &self.accounts {
            let old = mark.get(&a.name).cloned().unwrap_or_default();
            for s in &a.stores {
                let fresh = held
                    .get(&(a.name.clone(), s.name.clone()))
                    .is_some_and(|d| !old.iter().any(|o| o.same(d)));
                if !fresh {
                    out.push(format!("{}@{}", a.name, s.name));
                }
            }
        }
        out
    }

    /// Passes until every store of every account holds a credential not in
    /// `mark` (rotation resumed everywhere), or `limit`. Returns what is still
    /// stale.
    pub async fn wait_fresh(
        &mut self,
        daemon: &mut Daemon,
        mark: &HashMap<String, Vec<Doc>>,
        limit: Duration,
    ) -> Vec<String> {
        let start = Instant::now();
        loop {
            self.expect_alive(daemon);
            let held = self.pass().await;
            let stale = self.not_fresh(&held, mark);
            if stale.is_empty() || start.elapsed() > limit {
                return stale;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn expect_alive(&self, daemon: &mut Daemon) {
        if let Some(status) = daemon.exited() {
            let log = self.tail(&daemon.log, 40);
            panic!(
                "faults[{}]: the daemon exited on its own ({status}); log {}:\n{log}",
                self.scenario,
                daemon.log.display()
            );
        }
    }

    /// Starts the daemon and waits for /readyz.
    pub async fn start_ready(&mut self, inventory: &Path, socket: &Path, label: &str) -> Daemon {
        let mut d = self.start(inventory, socket, label);
        if let Err(e) = d.wait_ready(Duration::from_secs(90)).await {
            let log = self.tail(&d.log, 40);
            panic!(
                "faults[{}]: {e}; log {}:\n{log}",
                self.scenario,
                d.log.display()
            );
        }
        d
    }

    /// SIGTERM; returns the exit status (None: it did not stop within 60 s).
    pub async fn stop_status(&mut self, d: Daemon) -> Option<ExitStatus> {
        self.forget(&d);
        d.stop(Duration::from_secs(60)).await
    }

    /// SIGTERM; the daemon must exit 0.
    pub async fn stop(&mut self, d: Daemon) {
        let log = d.log.clone();
        match self.stop_status(d).await {
            Some(s) if s.success() => {}
            Some(s) => {
                self.violation(
                    &format!("exit {}", log.display()),
                    format!(
                        "the daemon exited with {s} on SIGTERM (log {})",
                        log.display()
                    ),
                );
            }
            None => {
                self.violation(
                    &format!("exit {}", log.display()),
                    format!(
                        "the daemon did not stop within 60 s of SIGTERM (log {})",
                        log.display()
                    ),
                );
            }
        }
    }

    /// The end of a log file with every known password blanked out.
    pub fn tail(&self, path: &Path, lines: usize) -> String {
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        let mut out = all[from..].join("\n");
        for s in &self.secrets {
            out = out.replace(s.as_str(), "[redacted]");
        }
        out
    }

    /// Daemon log lines (any run) that contain `needle`, case-insensitively.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        let needle = needle.to_lowercase();
        let mut out = Vec::new();
        for p in self.log_files() {
            let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).into_owned();
            for l in text.lines() {
                if l.to_lowercase().contains(&needle) {
                    let mut l = l.to_owned();
                    for s in &self.secrets {
                        l = l.replace(s.as_str(), "[redacted]");
                    }
                    out.push(l);
                }
            }
        }
        out
    }

    pub fn log_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.logs_dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    // ---- after the final recovery ----

    /// No ledger entry in a middle state; every login role of every account is
    /// one the ledger knows as live. `ledger` is the owning daemon's.
    pub async fn final_checks(&mut self, ledger: &Path) {
        let rows = match read_ledger(ledger).await {
            Ok(r) => r,
            Err(e) => {
                self.violation(
                    "ledger unreadable",
                    format!("cannot read the ledger {}: {e}", ledger.display()),
                );
                return;
            }
        };
        let accounts = self.accounts.clone();
        for r in &rows {
            if accounts.iter().any(|a| a.name == r.account)
                && matches!(
                    r.state.as_str(),
                    "planned" | "created" | "verified" | "published"
                )
            {
                self.stats.middle += 1;
                self.violation(
                    &format!("middle {} {}", r.account, r.version),
                    format!(
                        "ledger: account {} v{} {} left in state {} after the final recovery",
                        r.account, r.version, r.username, r.state
                    ),
                );
            }
        }
        let roles = self.catalog().await;
        for a in &accounts {
            let known: HashSet<&str> = rows
                .iter()
                .filter(|r| {
                    r.account == a.name && !matches!(r.state.as_str(), "revoked" | "aborted")
                })
                .map(|r| r.username.as_str())
                .collect();
            for r in roles.iter().filter(|r| Self::belongs(a, r) && r.canlogin) {
                if !known.contains(r.name.as_str()) {
                    self.stats.orphans += 1;
                    self.violation(
                        &format!("orphan {}", r.name),
                        format!(
                            "orphan: login role {} of account {} is not live in the ledger ({})",
                            r.name,
                            a.name,
                            if r.valid { "still valid" } else { "expired" }
                        ),
                    );
                }
            }
        }
    }

    /// Searches every daemon log of this world, the PostgreSQL server log written
    /// since the world began, and `extra` files (ledgers) for every password any
    /// store ever held.
    pub fn scan_leaks(&mut self, extra: &[&Path]) {
        let mut files = self.log_files();
        for e in extra {
            for suffix in ["", "-wal", "-shm"] {
                let p = PathBuf::from(format!("{}{suffix}", e.display()));
                if p.exists() {
                    files.push(p);
                }
            }
        }
        let mut found: HashSet<String> = HashSet::new();
        let mut scanned = 0u64;
        for f in &files {
            let bytes = std::fs::read(f).unwrap_or_default();
            scanned += bytes.len() as u64;
            for (s, at) in find_secrets(&bytes, &self.secrets) {
                if found.insert(s) {
                    self.violation(
                        &format!("leak {} {at}", f.display()),
                        format!("a password appears in {} at byte {at}", f.display()),
                    );
                }
            }
        }
        let pg = pg_log();
        if let Ok(bytes) = std::fs::read(&pg) {
            let from = (self.pg_log_start as usize).min(bytes.len());
            scanned += (bytes.len() - from) as u64;
            for (s, at) in find_secrets(&bytes[from..], &self.secrets) {
                if found.insert(s) {
                    self.violation(
                        &format!("leak pg {at}"),
                        format!(
                            "a password appears in the PostgreSQL server log {} at byte {}",
                            pg.display(),
                            from + at
                        ),
                    );
                }
            }
        }
        self.stats.leaked = found.len() as u64;
        println!(
            "faults[{}]: searched {} files ({} MiB) for {} passwords",
            self.scenario,
            files.len() + 1,
            scanned / (1 << 20),
            self.secrets.len()
        );
    }

    pub fn summary(&self) -> String {
        let s = &self.stats;
        format!(
            "faults: kills={} restarts={} pg_restarts={} lockouts={} orphans={} max_live={} leaked={} \
             overdue={} middle={} transient={} cut_short={} early_kills={} passes={} logins={} passwords={} scenario={}",
            s.kills,
            s.restarts,
            s.pg_restarts,
            s.lockouts,
            s.orphans,
            s.max_live,
            s.leaked,
            s.overdue,
            s.middle,
            s.transient,
            s.cut_short,
            s.early_kills,
            s.passes,
            s.logins,
            self.secrets.len(),
            self.scenario
        )
    }

    /// Copies the daemon logs, inventories and ledgers out of the test's
    /// temporary directory (which is removed with the test database) so that a
    /// failure can be read afterwards. Returns where they went.
    pub fn keep(&self) -> Option<PathBuf> {
        let base = std::env::var_os("CREDROTD_FAULT_KEEP_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dest = base.join(format!("credrotd-faults-{}-{}", self.scenario, self.db.tag));
        std::fs::create_dir_all(dest.join("logs")).ok()?;
        for f in self.log_files() {
            let _ = std::fs::copy(&f, dest.join("logs").join(f.file_name()?));
        }
        for e in std::fs::read_dir(self.db.dir.path()).ok()?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml") || name.contains(".db") {
                let _ = std::fs::copy(e.path(), dest.join(&name));
            }
        }
        Some(dest)
    }

    /// Prints the summary line, then fails the test on any violation.
    pub fn finish(&self) {
        println!("{}", self.summary());
        if !self.violations.is_empty() || std::env::var_os("CREDROTD_FAULT_KEEP").is_some() {
            if let Some(dest) = self.keep() {
                println!(
                    "faults[{}]: logs, inventories and ledgers kept in {}",
                    self.scenario,
                    dest.display()
                );
            }
        }
        let s = &self.stats;
        assert!(
            self.violations.is_empty()
                && s.lockouts == 0
                && s.orphans == 0
                && s.leaked == 0
                && s.max_live <= 2,
            "faults[{}]: {} violation(s):\n  {}\n{}",
            self.scenario,
            self.violations.len(),
            self.violations.join("\n  "),
            self.summary()
        );
    }
}

enum Login {
    Ok,
    /// The server refused the credential (28P01 / 28000).
    Refused(String),
    /// The server did not answer (restarting, down): not the credential's fault.
    Unreachable(String),
}

fn classify(e: sqlx::Error) -> Login {
    if let sqlx::Error::Database(d) = &e {
        if let Some(code) = d.code() {
            if code == "28P01" || code == "28000" {
                return Login::Refused(format!("{} ({code})", d.message()));
            }
        }
    }
    Login::Unreachable(e.to_string())
}

#[derive(Debug)]
pub struct LedgerRow {
    pub account: String,
    pub version: i64,
    pub username: String,
    pub state: String,
}

/// The ledger's credentials, opened read-only.
pub async fn read_ledger(path: &Path) -> Result<Vec<LedgerRow>, sqlx::Error> {
    let mut c = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .log_statements(log::LevelFilter::Off)
        .connect()
        .await?;
    let rows: Vec<(String, i64, String, String)> =
        sqlx::query_as("SELECT account, version, username, state FROM credentials ORDER BY id")
            .fetch_all(&mut c)
            .await?;
    let _ = c.close().await;
    Ok(rows
        .into_iter()
        .map(|(account, version, username, state)| LedgerRow {
            account,
            version,
            username,
            state,
        })
        .collect())
}

/// Removes a ledger with its WAL and shared-memory files.
pub fn delete_ledger(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot delete {}: {e}", p.display()),
        }
    }
}

/// Every secret that occurs in `hay`, with the offset of its first occurrence.
/// Linear in the size of `hay`: generated passwords are alphanumeric, so only
/// alphanumeric runs at least as long as a password are looked at.
pub fn find_secrets(hay: &[u8], secrets: &HashSet<String>) -> Vec<(String, usize)> {
    let mut by_len: HashMap<usize, HashMap<&[u8], &String>> = HashMap::new();
    let mut odd = Vec::new();
    for s in secrets {
        assert!(s.len() >= 16, "a secret is too short to search for");
        if s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            by_len.entry(s.len()).or_default().insert(s.as_bytes(), s);
        } else {
            odd.push(s);
        }
    }
    let mut found: HashMap<&String, usize> = HashMap::new();
    let mut i = 0;
    while i < hay.len() {
        if !hay[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < hay.len() && hay[i].is_ascii_alphanumeric() {
            i += 1;
        }
        let run = &hay[start..i];
        for (len, set) in &by_len {
            if run.len() >= *len {
                for (k, w) in run.windows(*len).enumerate() {
                    if let Some(s) = set.get(w) {
                        found.entry(s).or_insert(start + k);
                    }
                }
            }
        }
    }
    for s in odd {
        if let Some(at) = hay.windows(s.len()).position(|w| w == s.as_bytes()) {
            found.entry(s).or_insert(at);
        }
    }
    found.into_iter().map(|(s, at)| (s.clone(), at)).collect()
}

// ---- the daemon process ----------------------------------------------------------

pub struct Daemon {
    child: Child,
    pub log: PathBuf,
    pub socket: PathBuf,
    pub started: Instant,
    status: Option<ExitStatus>,
}

impl Daemon {
    pub fn start(inventory: &Path, socket: &Path, log: PathBuf) -> Daemon {
        let _ = std::fs::remove_file(socket);
        let child = Command::new(env!("CARGO_BIN_EXE_credrotd"))
            .arg("-c")
            .arg(inventory)
            .args(["--log-format", "json", "run"])
            .env(
                "RUST_LOG",
                std::env::var("CREDROTD_FAULT_LOG").unwrap_or_else(|_| "trace".into()),
            )
            .env_remove("CREDROTD_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("CREDENTIALS_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start credrotd run");
        Daemon {
            child,
            log,
            socket: socket.to_owned(),
            started: Instant::now(),
            status: None,
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    /// GET /readyz on the admin socket answered 200.
    pub async fn ready(&self) -> bool {
        admin_get(&self.socket, "/readyz").await.0 == 200
    }

    pub async fn wait_ready(&mut self, limit: Duration) -> Result<Duration, String> {
        loop {
            if let Some(s) = self.exited() {
                return Err(format!("the daemon exited ({s}) before it was ready"));
            }
            if self.ready().await {
                return Ok(self.started.elapsed());
            }
            if self.started.elapsed() > limit {
                return Err(format!("the daemon was not ready after {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// kill -9, and reap it.
    pub fn kill9(mut self) {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        self.status = Some(ExitStatus::default());
    }

    /// SIGTERM, then wait up to `limit` (then kill -9 and return None).
    pub async fn stop(mut self, limit: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exited() {
            return Some(s);
        }
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.status = Some(ExitStatus::default());
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One GET over the admin socket: (status, body); (0, "") when nobody answers.
pub async fn admin_get(socket: &Path, path: &str) -> (u16, String) {
    let fut = async {
        let mut s = tokio::net::UnixStream::connect(socket).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: credrotd\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .ok()
        .flatten()
        .unwrap_or((0, String::new()))
}

// ---- the PostgreSQL cluster ---------------------------------------------------------

pub fn pg_log() -> PathBuf {
    PathBuf::from(env("CREDROTD_TEST_PG_LOG"))
}

fn pg_ctl(args: &[&str]) -> std::process::Output {
    let bin = format!("{}/pg_ctl", env("CREDROTD_TEST_PG_BIN"));
    let data = format!("{}/data", env("CREDROTD_TEST_PG_DIR"));
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &bin]);
        c
    } else {
        Command::new(&bin)
    };
    cmd.args(["-D", &data])
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .expect("run pg_ctl")
}

/// `pg_ctl restart -m immediate`: the server's own options come from
/// `postmaster.opts`; the log file is named again so it stays the same.
pub fn pg_restart_immediate() -> Result<(), String> {
    let log = pg_log();
    let out = pg_ctl(&[
        "-l",
        &log.display().to_string(),
        "-w",
        "-t",
        "120",
        "-m",
        "immediate",
        "restart",
    ]);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "pg_ctl restart failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub fn pg_running() -> bool {
    pg_ctl(&["status"]).status.success()
}

/// Makes sure the shared cluster runs again when a scenario that stops it ends,
/// even by a panic: the test binaries that follow need it.
pub struct PgGuard;

impl Drop for PgGuard {
    fn drop(&mut self) {
        if !pg_running() {
            eprintln!("faults: the test PostgreSQL is down; starting it again");
            if let Err(e) = pg_restart_immediate() {
                eprintln!("faults: {e}");
            }
        }
    }
}

// ---- what lives outside PostgreSQL --------------------------------------------------

/// Vault secrets, Vault policies and AWS secrets of one world, removed on drop
/// (success or panic).
pub struct Remote {
    pub vault_paths: Vec<String>,
    pub aws_names: Vec<String>,
    pub policies: Vec<String>,
}

impl Drop for Remote {
    fn drop(&mut self) {
        let vault_paths = std::mem::take(&mut self.vault_paths);
        let aws_names = std::mem::take(&mut self.aws_names);
        let policies = std::mem::take(&mut self.policies);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let vault = root_vault();
                for p in vault_paths.iter().collect::<BTreeSet<_>>() {
                    let _ = vaultrs::kv2::delete_metadata(&vault, "secret", p).await;
                }
                for p in &policies {
                    let _ = vaultrs::sys::policy::delete(&vault, p).await;
                }
                let sm = aws_client().await;
                for n in aws_names.iter().collect::<BTreeSet<_>>() {
                    let _ = sm
                        .delete_secret()
                        .secret_id(n)
                        .force_delete_without_recovery(true)
                        .send()
                        .await;
                }
            });
        })
        .join();
    }
}
