//! The command line: argument parsing and one function per subcommand. Errors are
//! `anyhow` here and only here; each subcommand returns its exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use chrono::Utc;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::api::AccountStatus;
use crate::clock::{SharedClock, SystemClock};
use crate::inventory::{self, Checked, Inventory, InventoryError};
use crate::ledger::{Credential, Ledger};
use crate::progress::Progress;
use crate::rotation::{self, Context};
use crate::scheduler;
use crate::{engine, store};

#[derive(Debug, Parser)]
#[command(
    name = "credrotd",
    version,
    about = "Credential rotation daemon for machine identities"
)]
pub struct Cli {
    /// The inventory file.
    #[arg(
        short,
        long,
        global = true,
        env = "CREDROTD_CONFIG",
        default_value = "/etc/credrotd/inventory.yaml"
    )]
    pub config: PathBuf,
    /// Log format; RUST_LOG filters.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (plain text under systemd's journal).
    Pretty,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    /// An aligned table.
    Table,
    /// JSON, for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse, validate and policy-check the inventory (no network).
    Check,
    /// Show what would be created, granted, revoked and rotated (read-only).
    Plan,
    /// Run the daemon.
    Run(RunArgs),
    /// Rotate accounts now, in this process, then exit.
    Rotate(RotateArgs),
    /// Rebuild the ledger's view of accounts from the catalog and the stores
    /// (after the ledger was lost), finish what a crash left, then exit.
    Rebuild(RebuildArgs),
    /// Revoke an account's credentials now (break-glass).
    Revoke(RevokeArgs),
    /// Show each account's credentials and schedule (reads the ledger only).
    Status {
        /// Output: a table for people, or JSON for scripts.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Look at every role of each database: orphans, drift from the inventory,
    /// expired logins, dangerous attributes, role bloat, stale logins
    /// (read-only; exit 0 clean, 1 findings, 2 could not run).
    Audit(AuditArgs),
    /// Every role that can use PRIVILEGE on SCHEMA.OBJECT (or a schema), and the
    /// membership chain that gives it (read-only).
    WhoCan(WhoCanArgs),
    /// Talk to a running daemon over its admin socket.
    Ctl(CtlArgs),
    /// Run the quickstart on a throwaway local PostgreSQL (or MariaDB: --engine mariadb).
    Demo(crate::demo::DemoArgs),
    /// Write a draft inventory from the roles and grants a database holds
    /// today (read-only): automation logins become adopted static accounts.
    Import(ImportArgs),
    /// Print the inventory's JSON Schema (for editors and CI validators;
    /// config/inventory.schema.json is the same, committed).
    Schema,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) for credrotd and each subcommand to a
    /// directory, or credrotd(1) to stdout.
    Man {
        /// Write credrotd.1 and credrotd-<subcommand>.1 here instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Output: a table for people, or JSON for scripts.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// Only this database of the inventory.
    #[arg(long)]
    pub database: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A database to read, `URL` or `NAME=URL` (repeat for several; NAME
    /// defaults to the URL's database name). A password in the URL is used to
    /// connect and never written out.
    #[arg(long = "database", value_name = "[NAME=]URL", required = true)]
    pub databases: Vec<String>,
    /// Read the admin password from this environment variable.
    #[arg(long, conflicts_with = "password_file")]
    pub password_env: Option<String>,
    /// Read the admin password from this file.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// The draft's `environment:` (production, staging or development).
    #[arg(long, default_value = "production")]
    pub environment: String,
    /// Write the draft to this file (which must not exist) instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WhoCanArgs {
    /// SELECT, INSERT, UPDATE, DELETE, USAGE, EXECUTE, CREATE, …
    pub privilege: String,
    /// `schema.table`, `schema.function`, `schema.table.column` or `schema`
    /// (MySQL: `database.table` or `database`).
    pub object: String,
    /// Output: a table for people, or JSON for scripts.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// Only this database of the inventory.
    #[arg(long)]
    pub database: Option<String>,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The admin socket (default: the inventory's `admin.socket`).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Every account's status.
    Status {
        /// Output: a table for people, or JSON for scripts.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// One account in detail.
    Account {
        /// The account's name in the inventory.
        account: String,
    },
    /// Rotate an account now (lifts a break-glass suspension).
    Rotate {
        /// The account's name in the inventory.
        account: String,
    },
    /// Revoke an account's credentials now (break-glass).
    Revoke {
        /// The account's name in the inventory.
        account: String,
        /// Revoke only credentials still in their overlap window; without it
        /// the account is also suspended until `ctl rotate ACCOUNT`.
        #[arg(long)]
        previous_only: bool,
    },
    /// Reload the inventory.
    Reload,
    /// The event log after an event id.
    Events {
        /// Only events after this event id (0: the whole log).
        #[arg(long, default_value_t = 0)]
        since: i64,
    },
    /// Audit every database now (GET /v1/audit; exit 0 clean, 1 findings, 2
    /// a database could not be read).
    Audit {
        /// Output: a table for people, or JSON for scripts.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Is the daemon alive (GET /healthz)?
    Health,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Take over accounts whose scoped role another credrotd ledger owns.
    #[arg(long)]
    pub take_over: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["accounts", "all"])))]
pub struct RotateArgs {
    /// Accounts to rotate (lifts a break-glass suspension).
    #[arg(conflicts_with = "all")]
    pub accounts: Vec<String>,
    /// Rotate every account of the inventory (suspended accounts are skipped).
    #[arg(long)]
    pub all: bool,
    /// Take over accounts whose scoped role another credrotd ledger owns.
    #[arg(long)]
    pub take_over: bool,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Accounts to rebuild (default: all).
    pub accounts: Vec<String>,
    /// Take over accounts whose scoped role another credrotd ledger owns.
    #[arg(long)]
    pub take_over: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["accounts", "all"])))]
pub struct RevokeArgs {
    /// Accounts whose credentials to revoke (without `--previous-only`, each is
    /// suspended until `credrotd rotate ACCOUNT`).
    #[arg(conflicts_with = "all")]
    pub accounts: Vec<String>,
    /// Every account of the inventory.
    #[arg(long)]
    pub all: bool,
    /// Revoke only credentials still in their overlap window.
    #[arg(long)]
    pub previous_only: bool,
}

/// Sets up logging to stderr.
pub fn init_logging(format: LogFormat) {
    // rustify (under the Vault client) logs every error response, expected
    // 404s included, as an ERROR without context; credrotd reports store errors
    // itself, naming the store, path and account.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,rustify=off"));
    // No colour codes unless a person is watching: under systemd the journal
    // (and any log file) gets plain text.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // journald stamps every line itself.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let _ = match (format, journald) {
        (LogFormat::Pretty, false) => builder.try_init(),
        (LogFormat::Pretty, true) => builder.without_time().try_init(),
        (LogFormat::Json, _) => builder.json().flatten_event(true).try_init(),
    };
}

/// Runs the parsed command line.
/// The secret environment variables this command's inventory names (none for
/// commands that do not read an inventory's secrets).
pub fn secret_env_names(cli: &Cli) -> Vec<String> {
    match cli.command {
        Command::Demo(_)
        | Command::Ctl(_)
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Schema => Vec::new(),
        Command::Import(ref args) => args.password_env.iter().cloned().collect(),
        _ => inventory::secret_env_names(&cli.config),
    }
}

pub async fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Check => check(&cli.config),
        Command::Plan => plan(&cli.config).await,
        Command::Run(args) => run(&cli.config, args.take_over).await,
        Command::Rotate(args) => rotate(&cli.config, args).await,
        Command::Rebuild(args) => rebuild(&cli.config, args).await,
        Command::Revoke(args) => revoke(&cli.config, args).await,
        Command::Status { format } => status(&cli.config, format).await,
        Command::Audit(args) => audit(&cli.config, args).await,
        Command::WhoCan(args) => who_can(&cli.config, args).await,
        Command::Ctl(args) => ctl(&cli.config, args).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Import(args) => import(args).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "credrotd", &mut out);
            print_bytes(&out)
        }
        Command::Man { dir } => man(dir.as_deref()),
        Command::Schema => print_bytes(inventory::json_schema().as_bytes()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// "1 account", "2 accounts".
fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Writes generated text to stdout; a reader that went away (`| head`) is
/// not an error.
fn print_bytes(bytes: &[u8]) -> Result<ExitCode> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `credrotd man`: credrotd(1) to stdout, or every page into `dir`.
fn man(dir: Option<&std::path::Path>) -> Result<ExitCode> {
    let cmd = <Cli as clap::CommandFactory>::command();
    match dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            return print_bytes(&out);
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(cmd, dir)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads the inventory, printing warnings; invalid inventories print every error.
fn load(path: &std::path::Path) -> Result<Inventory> {
    match inventory::load(path) {
        Ok(Checked {
            inventory,
            warnings,
        }) => {
            for w in warnings {
                tracing::warn!("{w}");
            }
            Ok(inventory)
        }
        Err(e) => Err(anyhow::Error::new(e)),
    }
}

fn check(path: &std::path::Path) -> Result<ExitCode> {
    match inventory::load(path) {
        Ok(Checked {
            inventory,
            warnings,
        }) => {
            for w in &warnings {
                println!("{w}");
            }
            println!(
                "{}: ok ({}, {}, {}; environment {})",
                path.display(),
                plural(inventory.accounts.len(), "account"),
                plural(inventory.databases.len(), "database"),
                plural(inventory.stores.len(), "store"),
                inventory.environment.as_str()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(InventoryError::Invalid { errors }) => {
            for e in &errors {
                println!("{e}");
            }
            println!("{}: {} error(s)", path.display(), errors.len());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            println!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Builds the saga context for an inventory.
pub async fn context(inventory: Inventory, clock: SharedClock, take_over: bool) -> Result<Context> {
    let state = inventory.state.clone();
    crate::service::context(inventory, clock, None, take_over)
        .await
        .with_context(|| format!("starting with the ledger {state}"))
}

async fn plan(path: &std::path::Path) -> Result<ExitCode> {
    let inventory = load(path)?;
    let engines = engine::build(&inventory)?;
    let stores = store::build(&inventory);
    let ledger_path = inventory.state.trim_start_matches("sqlite://");
    let ledger = if std::path::Path::new(ledger_path).exists() {
        Some(Ledger::open(&inventory.state).await?)
    } else {
        None
    };
    let now = Utc::now();
    for (name, s) in &stores {
        match s.check().await {
            Ok(()) => println!("store {name}: reachable and writable"),
            Err(e) => println!("store {name}: PROBLEM: {e}"),
        }
    }
    // What the admin role lacks is informative, like the rest of the plan: the
    // exit code stays 0, and rotations report what actually fails.
    for (name, engine) in &engines {
        let accounts: Vec<&inventory::Account> = inventory
            .accounts
            .values()
            .filter(|a| &a.database == name)
            .collect();
        match engine.describe().await {
            Ok(Some(d)) => println!("database {name}: {d}"),
            Ok(None) => {}
            Err(e) => println!("database {name}: PROBLEM: {e}"),
        }
        match engine.check_admin(&accounts).await {
            Ok(gaps) if gaps.is_empty() => println!("admin privileges on {name}: ok"),
            Ok(gaps) => {
                println!("admin privileges on {name}: {} missing", gaps.len());
                for g in gaps {
                    println!("  missing: {}", g.missing);
                    if let Some(fix) = &g.fix {
                        println!("    fix: {fix}");
                    }
                }
            }
            Err(e) => println!("admin privileges on {name}: PROBLEM: {e}"),
        }
    }
    for account in inventory.accounts.values() {
        println!(
            "account {} (database {}, {}):",
            account.name,
            account.database,
            account.strategy.as_str()
        );
        match engines[&account.database].reconcile(account, false).await {
            Ok(r) => {
                if r.changes.is_empty() {
                    println!("  scoped role {}: up to date", account.name)
                }
                for c in &r.changes {
                    println!("  would run: {c}");
                }
                for s in &r.stuck {
                    println!("  would skip: {}: {}", s.what, s.error);
                }
            }
            Err(e) => println!("  PROBLEM: {e}"),
        }
        let live = match &ledger {
            Some(l) => l.live(&account.name).await?,
            None => Vec::new(),
        };
        let state = match &ledger {
            Some(l) => l.account(&account.name).await?,
            None => Default::default(),
        };
        let refs: Vec<&Credential> = live.iter().collect();
        for d in scheduler::due(account, &state, &refs, now) {
            match d {
                scheduler::Due::Rotate { at, why } if at <= now => {
                    println!("  would rotate now ({why})")
                }
                scheduler::Due::Rotate { at, .. } => {
                    println!("  next rotation at {}", crate::api::timestamp(at))
                }
                scheduler::Due::Retire { at, cred } => {
                    let user = live
                        .iter()
                        .find(|c| c.id == cred)
                        .map(|c| c.username.as_str())
                        .unwrap_or("?");
                    println!("  would revoke {user} at {}", crate::api::timestamp(at));
                }
                scheduler::Due::Housekeep { at } => {
                    println!(
                        "  would retry housekeeping at {}",
                        crate::api::timestamp(at)
                    )
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(path: &std::path::Path, take_over: bool) -> Result<ExitCode> {
    let inventory = load(path)?;
    crate::service::run(path, inventory, Arc::new(SystemClock), take_over).await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The admin socket to use: `--socket`, else the inventory's, else the default.
fn socket_path(config: &std::path::Path, socket: Option<PathBuf>) -> PathBuf {
    if let Some(s) = socket {
        return s;
    }
    inventory::load(config)
        .ok()
        .and_then(|c| c.inventory.admin.map(|a| a.socket))
        .unwrap_or_else(|| PathBuf::from("/run/credrotd/admin.sock"))
}

async fn ctl(config: &std::path::Path, args: CtlArgs) -> Result<ExitCode> {
    use hyper::Method;
    let socket = socket_path(config, args.socket);
    let (method, path, body) = match &args.command {
        CtlCommand::Status { .. } => (Method::GET, "/v1/status".to_owned(), None),
        CtlCommand::Account { account } => (Method::GET, format!("/v1/accounts/{account}"), None),
        CtlCommand::Rotate { account } => {
            (Method::POST, format!("/v1/accounts/{account}/rotate"), None)
        }
        CtlCommand::Revoke {
            account,
            previous_only,
        } => (
            Method::POST,
            format!("/v1/accounts/{account}/revoke"),
            Some(serde_json::to_vec(&crate::api::RevokeRequest {
                previous_only: *previous_only,
            })?),
        ),
        CtlCommand::Reload => (Method::POST, "/v1/reload".to_owned(), None),
        CtlCommand::Events { since } => (Method::GET, format!("/v1/events?since={since}"), None),
        CtlCommand::Health => (Method::GET, "/healthz".to_owned(), None),
        CtlCommand::Audit { .. } => (Method::GET, "/v1/audit".to_owned(), None),
    };
    let (status, bytes) = crate::admin::client::request(&socket, method, &path, body).await?;
    if !status.is_success() {
        let msg = serde_json::from_slice::<crate::api::ErrorBody>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        println!("error ({status}): {msg}");
        return Ok(ExitCode::FAILURE);
    }
    match &args.command {
        CtlCommand::Status {
            format: OutputFormat::Table,
        } => {
            let rows: Vec<AccountStatus> = serde_json::from_slice(&bytes)?;
            print_status_table(rows);
        }
        CtlCommand::Rotate { .. } => {
            let r: crate::api::RotateResponse = serde_json::from_slice(&bytes)?;
            println!(
                "{}: rotated to v{} ({}), expires {}",
                r.account, r.version, r.username, r.expires_at
            );
        }
        CtlCommand::Revoke { .. } => {
            let r: crate::api::RevokeResponse = serde_json::from_slice(&bytes)?;
            println!(
                "{}: revoked {}{}",
                r.account,
                if r.revoked.is_empty() {
                    "nothing".to_owned()
                } else {
                    r.revoked.join(", ")
                },
                if r.suspended {
                    "; suspended until the next explicit rotate"
                } else {
                    ""
                }
            );
        }
        CtlCommand::Reload => {
            let r: crate::api::ReloadResponse = serde_json::from_slice(&bytes)?;
            for w in &r.warnings {
                println!("{w}");
            }
            println!(
                "reloaded: {} accounts (added: {:?}, removed: {:?})",
                r.accounts, r.added, r.removed
            );
        }
        CtlCommand::Audit { format } => {
            let report: crate::audit::Report = serde_json::from_slice(&bytes)?;
            match format {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                OutputFormat::Table => print!("{}", report.table()),
            }
            return Ok(ExitCode::from(report.exit_code()));
        }
        CtlCommand::Events { .. } => {
            let events: Vec<crate::api::EventEntry> = serde_json::from_slice(&bytes)?;
            for e in events {
                let v = e.version.map(|v| format!(" v{v}")).unwrap_or_default();
                println!(
                    "{:>6} {} {}{} {} {}",
                    e.id, e.at, e.account, v, e.kind, e.detail
                );
            }
        }
        _ => {
            let v: serde_json::Value = serde_json::from_slice(&bytes)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every account of the inventory with `all`, otherwise the ones named, each of
/// which must be in it.
fn accounts_named(
    inventory: &Inventory,
    path: &std::path::Path,
    all: bool,
    named: Vec<String>,
) -> Result<Vec<String>> {
    if all {
        return Ok(inventory.accounts.keys().cloned().collect());
    }
    for n in &named {
        if !inventory.accounts.contains_key(n) {
            anyhow::bail!("account {n} is not in the inventory {}", path.display());
        }
    }
    Ok(named)
}

async fn rotate(path: &std::path::Path, args: RotateArgs) -> Result<ExitCode> {
    let inventory = load(path)?;
    let names = accounts_named(&inventory, path, args.all, args.accounts)?;
    // Naming an account is an operator's explicit request (it lifts a
    // break-glass suspension); `--all` is not.
    let trigger = if args.all {
        rotation::Trigger::Forced
    } else {
        rotation::Trigger::Explicit
    };
    let concurrency = inventory.rotation.concurrency;
    let ctx = Arc::new(context(inventory, Arc::new(SystemClock), args.take_over).await?);
    let progress = Arc::new(Progress::new("rotate", "account", names.len()));
    // The sagas run in a task of their own: a Ctrl-C waits for the steps in
    // flight to finish (a second one abandons them; the ledger makes them
    // resumable), so it never leaves a step half-done.
    let work = each_account(ctx.clone(), names, concurrency, {
        let progress = progress.clone();
        move |ctx, name| {
            let progress = progress.clone();
            async move {
                let started = std::time::Instant::now();
                let res =
                    scheduler::rotate_account(&ctx, &name, trigger, Duration::from_secs(60)).await;
                // What `status` shows is what happened here too.
                scheduler::observe_rotation(&ctx, &name, &res, started.elapsed()).await;
                // A suspended account is skipped, not failed.
                progress.item_done(matches!(
                    res,
                    Ok(_) | Err(rotation::RotationError::Suspended(_))
                ));
                res
            }
        }
    });
    let results = finish_despite_ctrl_c(work).await;
    progress.finish();
    let results = results?;
    let mut failed = 0;
    let mut ok = 0;
    let mut skipped = 0;
    let quiet = results.len() > 50;
    for (name, res) in &results {
        match res {
            Ok(r) => {
                ok += 1;
                if !quiet {
                    println!(
                        "{name}: rotated to v{} ({}), expires {}",
                        r.version,
                        r.username,
                        crate::api::timestamp(r.expires_at)
                    );
                }
            }
            Err(rotation::RotationError::Suspended(_)) if args.all => {
                skipped += 1;
                println!("{name}: skipped: suspended by a break-glass revoke (rotate it by name)");
            }
            Err(e) => {
                failed += 1;
                println!("{name}: FAILED: {e}");
            }
        }
    }
    if skipped > 0 {
        println!("{ok} rotated, {failed} failed, {skipped} skipped");
    } else {
        println!("{ok} rotated, {failed} failed");
    }
    ctx.ledger.close().await;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs `saga` for each account, at most `concurrency` at a time, each as a task
/// of its own (so that they run on every worker thread rather than being
/// polled in turn by one), in a task of its own: a Ctrl-C waits for the steps
/// in flight to finish (a second one abandons them; the ledger makes them
/// resumable), so it never leaves a step half-done. Results come in the order
/// the sagas finish; a saga's panic is the run's.
fn each_account<T, F, Fut>(
    ctx: Arc<Context>,
    names: Vec<String>,
    concurrency: usize,
    saga: F,
) -> tokio::task::JoinHandle<Vec<(String, T)>>
where
    T: Send + 'static,
    F: Fn(Arc<Context>, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut sagas = tokio::task::JoinSet::new();
        for name in names {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let run = saga(ctx.clone(), name.clone());
            sagas.spawn(async move {
                let _slot = slot;
                (name, run.await)
            });
        }
        let mut results = Vec::new();
        while let Some(done) = sagas.join_next().await {
            match done {
                Ok(r) => results.push(r),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {}
            }
        }
        results
    })
}

/// Waits for `work`; the first Ctrl-C only says that in-flight steps finish
/// first, a second one exits at once.
async fn finish_despite_ctrl_c<T>(work: tokio::task::JoinHandle<T>) -> Result<T> {
    tokio::pin!(work);
    let mut interrupted = false;
    loop {
        tokio::select! {
            done = &mut work => return done.context("the saga task failed"),
            _ = tokio::signal::ctrl_c() => {
                if interrupted {
                    eprintln!("abandoning in-flight steps; the next start of credrotd finishes or rolls them back");
                    std::process::exit(130);
                }
                interrupted = true;
                eprintln!("finishing the steps in flight (Ctrl-C again to abandon them)");
            }
        }
    }
}

async fn rebuild(path: &std::path::Path, args: RebuildArgs) -> Result<ExitCode> {
    let inventory = load(path)?;
    for n in &args.accounts {
        if !inventory.accounts.contains_key(n) {
            anyhow::bail!("account {n} is not in the inventory {}", path.display());
        }
    }
    let ctx = Arc::new(context(inventory, Arc::new(SystemClock), args.take_over).await?);
    let work = {
        let ctx = ctx.clone();
        let only = (!args.accounts.is_empty()).then(|| args.accounts.clone());
        tokio::spawn(async move { rotation::recover(&ctx, only.as_deref()).await })
    };
    let results = finish_despite_ctrl_c(work).await?;
    let mut failed = 0;
    for (name, res) in results {
        match res {
            Ok(r) => println!(
                "{name}: ok (adopted {:?}, promoted {:?}, rolled back {:?}, dropped {:?}{})",
                r.adopted,
                r.promoted,
                r.rolled_back,
                r.orphans_dropped,
                if r.rotate_now {
                    "; rotates at the next start"
                } else {
                    ""
                }
            ),
            Err(e) => {
                failed += 1;
                println!("{name}: FAILED: {e}");
            }
        }
    }
    ctx.ledger.close().await;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn revoke(path: &std::path::Path, args: RevokeArgs) -> Result<ExitCode> {
    let inventory = load(path)?;
    let names = accounts_named(&inventory, path, args.all, args.accounts)?;
    let concurrency = inventory.rotation.concurrency;
    let ctx = Arc::new(context(inventory, Arc::new(SystemClock), false).await?);
    let previous_only = args.previous_only;
    let work = each_account(
        ctx.clone(),
        names,
        concurrency,
        move |ctx, name| async move {
            let account = ctx.account(&name)?.clone();
            ctx.with_lease(&name, Duration::from_secs(60), |lease| {
                let ctx = &ctx;
                let account = &account;
                async move { rotation::revoke(ctx, &lease, account, previous_only).await }
            })
            .await
        },
    );
    let mut results = finish_despite_ctrl_c(work).await?;
    ctx.ledger.close().await;
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let quiet = results.len() > 50;
    let (mut revoked_n, mut failed) = (0, 0);
    for (name, res) in &results {
        match res {
            Ok(revoked) => {
                revoked_n += revoked.len();
                if quiet {
                    continue;
                }
                if revoked.is_empty() {
                    println!("{name}: nothing to revoke");
                } else {
                    println!("{name}: revoked {}", revoked.join(", "));
                }
                if !previous_only {
                    println!("{name}: suspended; `credrotd rotate {name}` issues a new credential");
                }
            }
            Err(e) => {
                failed += 1;
                println!("{name}: FAILED: {e}");
            }
        }
    }
    if results.len() > 1 {
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        println!(
            "{} of {} revoked, {failed} failed",
            plural(revoked_n, "credential"),
            plural(results.len() - failed, "account")
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The ledger, if it exists: read-only commands never create one.
async fn existing_ledger(inventory: &Inventory) -> Result<Option<Ledger>> {
    let path = inventory.state.trim_start_matches("sqlite://");
    if std::path::Path::new(path).exists() {
        Ok(Some(Ledger::open(&inventory.state).await?))
    } else {
        Ok(None)
    }
}

/// Which databases a read-only command looks at: all, or the one asked for
/// (which must exist).
fn databases_of(inventory: &Inventory, only: Option<&str>) -> Result<()> {
    if let Some(name) = only {
        anyhow::ensure!(
            inventory.databases.contains_key(name),
            "--database {name}: the inventory has no such database (it has: {})",
            inventory
                .databases
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

async fn audit(path: &std::path::Path, args: AuditArgs) -> Result<ExitCode> {
    let report = async {
        let inventory = load(path)?;
        databases_of(&inventory, args.database.as_deref())?;
        let engines = engine::build(&inventory)?;
        let ledger = existing_ledger(&inventory).await?;
        let activity = match &ledger {
            Some(l) => Some(l.activity().await?),
            None => None,
        };
        let report = crate::audit::collect(
            &inventory,
            &engines,
            ledger.as_ref(),
            activity.as_ref(),
            args.database.as_deref(),
            inventory.audit.stale_after,
            &Progress::new(
                "audit",
                "database",
                if args.database.is_some() {
                    1
                } else {
                    engines.len()
                },
            ),
        )
        .await;
        if let Some(l) = ledger {
            l.close().await;
        }
        anyhow::Ok(report)
    }
    .await;
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Table => print!("{}", report.table()),
    }
    Ok(ExitCode::from(report.exit_code()))
}

/// `credrotd import`: reads each database's catalog and writes a draft
/// inventory that `check` accepts (it is checked before it is written).
async fn import(args: ImportArgs) -> Result<ExitCode> {
    let password = match (&args.password_env, &args.password_file) {
        (Some(var), _) => inventory::PasswordSource::Env(var.clone()),
        (None, Some(file)) => inventory::PasswordSource::File(file.clone()),
        (None, None) => inventory::PasswordSource::None,
    };
    if let Some(out) = &args.output {
        anyhow::ensure!(
            !out.exists(),
            "{} exists; credrotd import does not overwrite a file",
            out.display()
        );
    }
    let mut wanted = Vec::new();
    for arg in &args.databases {
        let (name, url) = import_target(arg)?;
        anyhow::ensure!(
            !wanted.iter().any(|(n, _, _): &(String, _, _)| *n == name),
            "two databases are named {name}; write NAME=URL to tell them apart"
        );
        let engine = match url.scheme() {
            "postgres" | "postgresql" => inventory::EngineKind::Postgres,
            "mysql" => inventory::EngineKind::Mysql,
            "mariadb" => inventory::EngineKind::Mariadb,
            other => anyhow::bail!(
                "{name}: unsupported URL scheme {other:?} (postgres://, mysql:// or mariadb://)"
            ),
        };
        wanted.push((name, engine, url));
    }
    let progress = Progress::new("import", "database", wanted.len());
    let mut sources = Vec::new();
    for (name, engine, url) in wanted {
        let db = inventory::Database {
            name: name.clone(),
            engine,
            url: url.to_string(),
            password: password.clone(),
            publish_host: None,
            publish_port: None,
            publish_dbname: None,
            max_connections: 1,
            hosts: if engine.is_mysql() {
                vec!["%".to_owned()]
            } else {
                Vec::new()
            },
        };
        let catalog = async { engine::build_one(&db)?.catalog().await }.await;
        progress.item_done(catalog.is_ok());
        let catalog = catalog.with_context(|| format!("reading the roles of database {name}"))?;
        let mut written = url;
        let _ = written.set_password(None);
        // Only the connection's TLS and addressing settings go into the
        // draft: an unknown parameter may be a mistyped password.
        type Pairs = Vec<(String, String)>;
        let (query, dropped): (Pairs, Pairs) = written
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .partition(|(k, _)| {
                k.starts_with("ssl")
                    || matches!(
                        k.as_str(),
                        "host" | "port" | "application_name" | "connect_timeout"
                    )
            });
        for (k, _) in dropped.iter().filter(|(k, _)| k != "password") {
            eprintln!("{name}: URL parameter {k:?} is not copied into the draft");
        }
        if query.is_empty() {
            written.set_query(None);
        } else {
            written.query_pairs_mut().clear().extend_pairs(query);
        }
        sources.push(crate::import::Source {
            name,
            engine,
            url: written.to_string(),
            catalog,
        });
    }
    progress.finish();
    let text = crate::import::draft(
        &sources,
        &crate::import::Options {
            environment: args.environment.clone(),
            at: Utc::now(),
        },
    );
    let shown = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from("import.yaml"));
    let accounts = match inventory::parse(&shown, &text) {
        Ok(checked) => checked.inventory.accounts.len(),
        Err(e) => anyhow::bail!(
            "the draft does not pass check, so it was not written (a bug of credrotd import; the inventory it read is fine):\n{e}"
        ),
    };
    match &args.output {
        Some(out) => {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(out)
                .with_context(|| format!("creating {}", out.display()))?;
            f.write_all(text.as_bytes())?;
            eprintln!(
                "{}: draft with {} from {}; review it, then `credrotd -c {} check`",
                out.display(),
                plural(accounts, "account"),
                plural(sources.len(), "database"),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        None => print_bytes(text.as_bytes()),
    }
}

/// `NAME=URL` or `URL` (named after its database).
fn import_target(arg: &str) -> Result<(String, url::Url)> {
    let (name, url) = match arg.split_once('=') {
        Some((name, url)) if !name.contains(':') && !name.contains('/') => {
            (Some(name.to_owned()), url)
        }
        _ => (None, arg),
    };
    // Never echo the URL: it may carry a password.
    let url = url::Url::parse(url).map_err(|e| {
        anyhow::anyhow!(
            "--database: not a URL ({e}); expected [NAME=]postgres://user@host:port/dbname"
        )
    })?;
    let db = url.path().trim_start_matches('/');
    anyhow::ensure!(
        name.is_some() || !db.is_empty(),
        "--database: the URL names no database; write NAME=URL"
    );
    let name = crate::import::database_name(name.as_deref(), db)
        .map_err(|e| anyhow::anyhow!("--database {e}; write NAME=URL"))?;
    Ok((name, url))
}

async fn who_can(path: &std::path::Path, args: WhoCanArgs) -> Result<ExitCode> {
    let inventory = load(path)?;
    databases_of(&inventory, args.database.as_deref())?;
    let engines = engine::build(&inventory)?;
    #[derive(serde::Serialize)]
    struct Answer {
        database: String,
        holders: Vec<crate::audit::Holder>,
    }
    let mut answers = Vec::new();
    for (name, engine) in &engines {
        if args.database.as_deref().is_some_and(|d| d != name) {
            continue;
        }
        let catalog = engine.catalog().await?;
        let targets = crate::audit::resolve(&catalog, &args.object);
        answers.push(Answer {
            database: name.clone(),
            holders: crate::audit::who_can(&catalog, &args.privilege, &targets),
        });
    }
    if args.format == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&answers)?);
        return Ok(ExitCode::SUCCESS);
    }
    for a in answers {
        println!(
            "database {}: who can {} on {}",
            a.database,
            args.privilege.to_ascii_uppercase(),
            args.object
        );
        if a.holders.is_empty() {
            println!("  nobody");
        }
        for h in a.holders {
            let login = if h.can_login { " (login)" } else { "" };
            println!(
                "  {}{login}: {} via {}",
                h.role,
                h.chain.join(" -> "),
                h.via
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(path: &std::path::Path, format: OutputFormat) -> Result<ExitCode> {
    let inventory = load(path)?;
    // `status` only reads: where no ledger exists yet it reports that, and
    // shows the inventory's accounts from an empty scratch ledger instead of
    // creating one.
    let file =
        <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&inventory.state)
            .map(|o| o.get_filename().to_path_buf())
            .ok();
    let scratch = match file {
        Some(f)
            if !f.as_os_str().is_empty()
                && f != std::path::Path::new(":memory:")
                && !f.exists() =>
        {
            eprintln!(
                "no ledger at {} yet: nothing has been issued (credrotd run or rotate creates it)",
                f.display()
            );
            Some(tempfile::tempdir()?)
        }
        _ => None,
    };
    let ledger = match &scratch {
        Some(dir) => {
            Ledger::open(&format!(
                "sqlite://{}",
                dir.path().join("empty.db").display()
            ))
            .await?
        }
        None => Ledger::open(&inventory.state).await?,
    };
    let rows = crate::api::statuses(&inventory, &ledger, Utc::now()).await?;
    ledger.close().await;
    drop(scratch);
    if format == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_status_table(rows);
    Ok(ExitCode::SUCCESS)
}

/// "in 5h 12m" / "3m ago" for an RFC 3339 time, to the minute (seconds
/// under a minute); the time itself when it does not parse.
fn relative(at: &str, now: chrono::DateTime<Utc>) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(at) else {
        return at.to_owned();
    };
    let secs = (t.with_timezone(&Utc) - now).num_seconds();
    let n = secs.unsigned_abs();
    let rounded = if n < 60 { n } else { n - n % 60 };
    let span = humantime::format_duration(std::time::Duration::from_secs(rounded));
    if secs >= 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

fn print_status_table(rows: Vec<AccountStatus>) {
    let now = Utc::now();
    let rel = |at: &str| {
        if at == "-" {
            at.to_owned()
        } else {
            relative(at, now)
        }
    };
    println!(
        "{:<24} {:<11} {:<34} {:<20} {:<20} {:<20} LAST RESULT",
        "ACCOUNT", "STRATEGY", "CURRENT", "ISSUED", "EXPIRES", "NEXT ROTATION"
    );
    for r in rows {
        let (user, issued, expires) = match &r.current {
            Some(c) => (
                format!("{} (v{})", c.username, c.version),
                c.issued_at.clone(),
                c.expires_at.clone(),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let mut last = r.last_result.clone().unwrap_or_else(|| "-".into());
        if r.suspended {
            last.push_str(" (suspended)");
        }
        if let Some(e) = &r.last_error {
            last.push_str(&format!(": {e}"));
        }
        if let Some(owner) = &r.foreign_owner {
            last = format!("NOT MANAGED: {owner}");
        }
        println!(
            "{:<24} {:<11} {:<34} {:<20} {:<20} {:<20} {}",
            r.account,
            r.strategy,
            user,
            rel(&issued),
            rel(&expires),
            rel(r.next_rotation.as_deref().unwrap_or("-")),
            last
        );
        if let Some(p) = &r.previous {
            println!(
                "{:<24} {:<11} {:<34} previous, valid until {}",
                "",
                "",
                format!("{} (v{})", p.username, p.version),
                p.retire_at.as_deref().unwrap_or("?")
            );
        }
        if let Some(until) = &r.extended_until {
            println!(
                "{:<24} {:<11} expiry EXTENDED until {until} while rotations fail: {}",
                "",
                "",
                r.extended_reason.as_deref().unwrap_or("-")
            );
        }
        for s in &r.stuck {
            println!(
                "{:<24} {:<11} STUCK {} {} since {} ({} attempts, next {}): {}",
                "", "", s.kind, s.subject, s.since, s.attempts, s.retry_at, s.error
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every subcommand, argument and value of the command line says what it is
    /// (`--help`, the man page and completions all show it).
    #[test]
    fn every_subcommand_argument_and_value_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} <{id}>"));
                }
                // Flags (true/false) and the shell names say what they are.
                let own_values = arg.get_action().takes_values() && id != "shell";
                for v in arg.get_possible_values().into_iter().filter(|_| own_values) {
                    if v.get_help().is_none() {
                        missing.push(format!("{path} <{id}> value {}", v.get_name()));
                    }
                }
            }
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_name() != "help" && sub.get_about().is_none() {
                    missing.push(p.clone());
                }
                walk(sub, &p, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "credrotd", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
        Cli::command().debug_assert();
    }

    #[test]
    fn status_shows_times_relative_to_now() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(relative("2026-11-29T15:12:40Z", now), "in 5h 12m");
        assert_eq!(relative("2026-11-29T09:57:00Z", now), "3m ago");
        assert_eq!(relative("2026-11-29T10:00:42Z", now), "in 42s");
        assert_eq!(relative("not a time", now), "not a time");
    }

    #[test]
    fn completions_and_the_man_page_cover_every_subcommand() {
        let mut cmd = Cli::command();
        let mut bash = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "credrotd", &mut bash);
        let bash = String::from_utf8(bash).unwrap();
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut man)
            .unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(
            man.starts_with(".ie") || man.contains(".TH credrotd"),
            "{man}"
        );
        for sub in Cli::command().get_subcommands() {
            let name = sub.get_name();
            assert!(bash.contains(name), "bash completion lacks {name}");
            // roff writes a hyphen as `\-`.
            assert!(
                man.contains(&name.replace('-', "\\-")),
                "man page lacks {name}"
            );
        }
        assert!(bash.contains("--previous-only") && bash.contains("--take-over"));
        let dir = tempfile::tempdir().unwrap();
        man_to(dir.path());
        assert!(dir.path().join("credrotd.1").exists());
        assert!(dir.path().join("credrotd-rotate.1").exists());
        assert!(dir.path().join("credrotd-ctl-revoke.1").exists());
    }

    fn man_to(dir: &std::path::Path) {
        man(Some(dir)).unwrap();
    }
}
