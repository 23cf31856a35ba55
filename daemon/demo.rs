//! `credrotd demo`: the main job end to end on a throwaway setup. It starts a
//! PostgreSQL cluster of its own in a temporary directory (password authentication
//! on), or with `--engine mariadb` a MariaDB server ([`mariadb`]), writes an
//! inventory of three accounts on a schedule of seconds, runs the daemon, and shows
//! issue → rotate → overlap → revoke live, with a consumer that logs in with
//! whatever the file store holds and with the credential it held before.
//! Everything is removed on Ctrl-C or after `--duration`.

mod mariadb;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use chrono::Utc;
use clap::{Args, ValueEnum};
use sqlx::mysql::MySqlConnectOptions;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

use crate::clock::SystemClock;
use crate::secret::Secret;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The server to run on.
    #[arg(long, value_enum, default_value_t = DemoEngine::Postgres)]
    pub engine: DemoEngine,
    /// Use this existing server (an admin URL that may create databases and roles:
    /// postgres://, or mysql:// with --engine mariadb) instead of starting a
    /// throwaway one.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Stop after this long (e.g. 90s); default: run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Keep the temporary directory (inventory, ledger, secrets) for inspection.
    #[arg(long)]
    pub keep: bool,
}

/// Which server the demo runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DemoEngine {
    /// A PostgreSQL cluster (initdb, pg_ctl).
    Postgres,
    /// A MariaDB server (mariadb-install-db, mariadbd); `mysql` is accepted
    /// too: the demo's throwaway server is MariaDB either way.
    #[value(alias = "mysql")]
    Mariadb,
}

const ADMIN: &str = "credrotd_admin";

/// A PostgreSQL cluster in a temporary directory, stopped on drop.
struct Cluster {
    pg_ctl: PathBuf,
    data: PathBuf,
    run_as: Option<(u32, u32)>,
    port: u16,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut cmd = Command::new(&self.pg_ctl);
        cmd.args(["stop", "-m", "fast", "-w", "-D"]).arg(&self.data);
        as_user(&mut cmd, self.run_as);
        let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

fn as_user(cmd: &mut Command, ids: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid);
    }
}

/// Finds a PostgreSQL server binary on PATH or in Debian's versioned directories.
/// `CREDROTD_PG_BINDIR`, when set, is the only place looked at.
pub fn find_pg_binary(name: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CREDROTD_PG_BINDIR") {
        let p = PathBuf::from(dir).join(name);
        return p.is_file().then_some(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
        .filter(|p| p.is_file())
        .collect();
    versions.sort();
    versions.pop()
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn start_cluster(dir: &Path, password: &Secret) -> Result<Cluster> {
    let (Some(initdb), Some(pg_ctl)) = (find_pg_binary("initdb"), find_pg_binary("pg_ctl")) else {
        bail!(
            "the PostgreSQL server programs (initdb, pg_ctl) are not installed.\n\
             Install them (Debian/Ubuntu: `apt-get install postgresql`; Fedora/RHEL: `dnf install postgresql-server`;\n\
             macOS: `brew install postgresql`), or point the demo at a server: `credrotd demo --database-url postgres://admin@host/db`"
        );
    };
    // initdb refuses to run as root: run the cluster as the `postgres` user.
    let run_as = if nix::unistd::geteuid().is_root() {
        let user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .context(
                "running as root, and there is no `postgres` user to run the demo cluster as",
            )?;
        Some((user.uid.as_raw(), user.gid.as_raw()))
    } else {
        None
    };
    let data = dir.join("pgdata");
    let pwfile = dir.join("pgpass.tmp");
    std::fs::write(&pwfile, password.expose())?;
    if let Some((uid, gid)) = run_as {
        for p in [dir, pwfile.as_path()] {
            nix::unistd::chown(p, Some(uid.into()), Some(gid.into()))?;
        }
    }
    let mut cmd = Command::new(&initdb);
    cmd.args([
        "-U",
        ADMIN,
        "--auth=scram-sha-256",
        "-E",
        "UTF8",
        "--no-sync",
        "-D",
    ])
    .arg(&data)
    .arg(format!("--pwfile={}", pwfile.display()));
    as_user(&mut cmd, run_as);
    let out = cmd.output().context("running initdb")?;
    let _ = std::fs::remove_file(&pwfile);
    if !out.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let port = free_port()?;
    let log = dir.join("postgres.log");
    let mut cmd = Command::new(&pg_ctl);
    cmd.args(["start", "-w", "-t", "60", "-D"])
        .arg(&data)
        .arg("-l")
        .arg(&log)
        .arg("-o")
        .arg(format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            dir.display()
        ));
    as_user(&mut cmd, run_as);
    let cluster = Cluster {
        pg_ctl,
        data,
        run_as,
        port,
    };
    let out = cmd.output().context("running pg_ctl start")?;
    if !out.status.success() {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        bail!(
            "pg_ctl start failed: {}\n{log}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(cluster)
}

const FIXTURES: &str = "
CREATE SCHEMA analytics;
CREATE TABLE analytics.events (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), kind text NOT NULL);
CREATE TABLE public.orders (id bigserial PRIMARY KEY, customer_id bigint NOT NULL, total numeric NOT NULL);
CREATE TABLE public.customers (id bigserial PRIMARY KEY, name text NOT NULL);
INSERT INTO public.customers (name) VALUES ('Ada'), ('Grace');
INSERT INTO public.orders (customer_id, total) VALUES (1, 42.00), (2, 17.50);
";

fn inventory_yaml(dir: &Path, url: &str, pwfile: Option<&Path>, prefix: &str) -> String {
    let password = pwfile
        .map(|p| format!("\n    password_file: {}", p.display()))
        .unwrap_or_default();
    format!(
        r#"# Written by `credrotd demo`. Schedules are seconds apart so that you can watch.
version: 1
environment: development
state: sqlite://{dir}/state.db
rotation: {{ concurrency: 4, retry_initial: 5s, retry_max: 30s }}
defaults: {{ overlap: 8s, expiry_margin: 30s, store: local }}
databases:
  app:
    engine: postgres
    url: {url}{password}
stores:
  local: {{ kind: file, dir: {dir}/secrets, mode: "0400" }}
accounts:
  {prefix}etl_nightly:
    database: app
    purpose: Nightly ETL into the analytics schema
    owner: data-platform
    strategy: ephemeral
    schedule: "*/20 * * * * *"
    grants:
      - {{ schema: analytics, privileges: [USAGE] }}
      - {{ schema: analytics, tables: "*", privileges: [SELECT, INSERT, UPDATE] }}
      - {{ schema: analytics, sequences: "*", privileges: [USAGE] }}
      - {{ schema: public, privileges: [USAGE] }}
      - {{ schema: public, tables: [orders, customers], privileges: [SELECT] }}
    connection_limit: 5
  {prefix}report_gen:
    database: app
    purpose: Monthly report generator (pins its username)
    owner: finance
    strategy: alternating
    schedule: "5/30 * * * * *"
    overlap: 10s
    grants:
      - {{ schema: public, privileges: [USAGE] }}
      - {{ schema: public, tables: [orders], privileges: [SELECT] }}
  {prefix}billing:
    database: app
    purpose: Legacy billing service with a fixed role
    owner: payments
    strategy: static
    role: {prefix}billing_svc
    overlap: 0s
    schedule: "15/30 * * * * *"
    grants:
      - {{ schema: public, privileges: [USAGE] }}
      - {{ schema: public, tables: [customers], privileges: [SELECT] }}
"#,
        dir = dir.display()
    )
}

/// What the consumer saw last for one account.
struct Seen {
    version: i64,
    username: String,
    password: Secret,
}

/// Where the consumer logs in: the demo database's server and name.
enum Target {
    Postgres(PgConnectOptions),
    Mysql(MySqlConnectOptions),
}

fn login_error(e: sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_owned(),
        other => other.to_string(),
    }
}

async fn try_login(
    base: &Target,
    user: &str,
    password: &Secret,
) -> std::result::Result<(), String> {
    const LIMIT: Duration = Duration::from_secs(5);
    match base {
        Target::Postgres(base) => {
            let opts = base.clone().username(user).password(password.expose());
            match tokio::time::timeout(LIMIT, opts.connect()).await {
                Err(_) => Err("timed out".into()),
                Ok(Err(e)) => Err(login_error(e)),
                Ok(Ok(mut c)) => {
                    let r = sqlx::query_scalar::<_, i32>("SELECT 1")
                        .fetch_one(&mut c)
                        .await;
                    let _ = c.close().await;
                    r.map(|_| ()).map_err(|e| e.to_string())
                }
            }
        }
        Target::Mysql(base) => {
            let opts = base.clone().username(user).password(password.expose());
            match tokio::time::timeout(LIMIT, opts.connect()).await {
                Err(_) => Err("timed out".into()),
                Ok(Err(e)) => Err(login_error(e)),
                Ok(Ok(mut c)) => {
                    let r = sqlx::query_scalar::<_, i64>("SELECT 1")
                        .fetch_one(&mut c)
                        .await;
                    let _ = c.close().await;
                    r.map(|_| ()).map_err(|e| e.to_string())
                }
            }
        }
    }
}

/// The secret file of `account`, if it reads as a credrotd payload.
fn read_secret(secrets: &std::path::Path, account: &str) -> Option<Seen> {
    #[derive(serde::Deserialize)]
    struct Doc {
        username: String,
        password: String,
        version: i64,
    }
    let bytes =
        zeroize::Zeroizing::new(std::fs::read(secrets.join(format!("{account}.json"))).ok()?);
    let doc = serde_json::from_slice::<Doc>(&bytes).ok()?;
    Some(Seen {
        version: doc.version,
        username: doc.username,
        password: Secret::new(doc.password),
    })
}

/// Every few seconds, reads each account's secret file and logs in with it, and
/// with the credential it replaced, to show the overlap and the revocation.
async fn consumer(base: Target, secrets: PathBuf, accounts: Vec<String>) {
    let mut seen: BTreeMap<String, (Seen, Option<Seen>)> = BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(4)).await;
        for account in &accounts {
            let Some(now) = read_secret(&secrets, account) else {
                continue;
            };
            let entry = seen.remove(account);
            let (cur, prev) = match entry {
                Some((old, prev)) if old.version == now.version => (old, prev),
                Some((old, _)) => (now, Some(old)),
                None => (now, None),
            };
            let mut res = try_login(&base, &cur.username, &cur.password).await;
            let mut cur = cur;
            let mut prev = prev;
            let mut note = "";
            if res.is_err() {
                // What a consumer of a static account does (its password is
                // replaced in place, with no overlap): re-read the secret once
                // and retry with it if it moved on.
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Some(newer) =
                    read_secret(&secrets, account).filter(|n| n.version != cur.version)
                {
                    res = try_login(&base, &newer.username, &newer.password).await;
                    prev = Some(std::mem::replace(&mut cur, newer));
                    note = " (after re-reading the secret: replaced in place)";
                }
            }
            let mut line = format!(
                "{} consumer {:<18} v{:<3} {:<32} {}",
                Utc::now().format("%H:%M:%S"),
                account,
                cur.version,
                cur.username,
                match &res {
                    Ok(()) => format!("login ok{note}"),
                    Err(e) => format!("login FAILED: {e}"),
                }
            );
            if let Some(p) = &prev {
                let r = if p.username == cur.username {
                    // Alternating/static reuse the name; the old password is what
                    // is being tested.
                    try_login(&base, &p.username, &p.password).await
                } else {
                    try_login(&base, &p.username, &p.password).await
                };
                line.push_str(&format!(
                    " | previous v{} {}: {}",
                    p.version,
                    p.username,
                    match r {
                        Ok(()) => "still works (overlap)".to_owned(),
                        Err(e) => format!("refused ({e})"),
                    }
                ));
            }
            println!("{line}");
            seen.insert(account.clone(), (cur, prev));
        }
    }
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    match args.engine {
        DemoEngine::Postgres => run_postgres(args).await,
        DemoEngine::Mariadb => mariadb::run(args).await,
    }
}

/// The demo on PostgreSQL.
async fn run_postgres(args: DemoArgs) -> Result<ExitCode> {
    if let Some(url) = &args.database_url {
        // Name only the scheme: the rest of a URL may carry a password.
        if let Some((scheme @ ("mysql" | "mariadb"), _)) = url.split_once("://") {
            bail!("--database-url: a {scheme}:// URL needs --engine mariadb");
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix("credrotd-demo-")
        .tempdir()?;
    let dir = tmp.path().to_owned();
    let admin_password = Secret::generate();
    let (cluster, admin_url, pwfile, prefix, created_db);
    match &args.database_url {
        None => {
            println!(
                "starting a throwaway PostgreSQL cluster in {} ...",
                dir.display()
            );
            let c = start_cluster(&dir, &admin_password)?;
            let port = c.port;
            cluster = Some(c);
            let pw = dir.join("admin.password");
            std::fs::write(&pw, admin_password.expose())?;
            pwfile = Some(pw);
            admin_url = format!("postgres://{ADMIN}@127.0.0.1:{port}/app");
            prefix = String::new();
            let mut conn = PgConnectOptions::from_str(&format!(
                "postgres://{ADMIN}@127.0.0.1:{port}/postgres"
            ))?
            .password(admin_password.expose())
            .disable_statement_logging()
            .connect()
            .await?;
            conn.execute("CREATE DATABASE app").await?;
            conn.close().await?;
            created_db = None;
        }
        Some(url) => {
            cluster = None;
            pwfile = None;
            let tag: u16 = rand::random();
            prefix = format!("demo{tag:04x}_");
            let db = format!("credrotd_demo_{tag:04x}");
            let base = PgConnectOptions::from_str(url).context("--database-url")?;
            let mut conn = base.clone().disable_statement_logging().connect().await?;
            conn.execute(format!("CREATE DATABASE {db}").as_str())
                .await?;
            conn.close().await?;
            let mut u = url.clone();
            if let Some(i) = u.rfind('/') {
                if u[i..].contains('@') || u[..i].ends_with('/') {
                    u.push('/');
                    u.push_str(&db);
                } else {
                    u.truncate(i + 1);
                    u.push_str(&db);
                }
            }
            admin_url = u;
            created_db = Some((url.clone(), db));
        }
    }

    let result = demo_body(
        &args,
        &dir,
        &admin_url,
        pwfile.as_deref(),
        &admin_password,
        &prefix,
    )
    .await;

    if let Some((url, db)) = &created_db {
        if let Err(e) = cleanup_external(url, db, &prefix).await {
            eprintln!("warning: demo clean-up on the external server was incomplete: {e:#}");
        }
    }
    drop(cluster);
    if args.keep {
        let kept = tmp.keep();
        println!("kept {}", kept.display());
    }
    result
}

async fn demo_body(
    args: &DemoArgs,
    dir: &Path,
    admin_url: &str,
    pwfile: Option<&Path>,
    admin_password: &Secret,
    prefix: &str,
) -> Result<ExitCode> {
    let mut admin = PgConnectOptions::from_str(admin_url)?.disable_statement_logging();
    if pwfile.is_some() {
        admin = admin.password(admin_password.expose());
    }
    let mut conn = admin
        .connect()
        .await
        .context("connecting to the demo database")?;
    conn.execute(FIXTURES).await?;
    // The static strategy manages an existing role; create it the way an
    // operator's provisioning would.
    conn.execute(format!("CREATE ROLE {prefix}billing_svc LOGIN").as_str())
        .await?;
    conn.close().await?;

    let base = PgConnectOptions::new()
        .host(admin.get_host())
        .port(admin.get_port())
        .database(admin.get_database().unwrap_or("postgres"))
        .disable_statement_logging();
    watch(
        args,
        dir,
        inventory_yaml(dir, admin_url, pwfile, prefix),
        Target::Postgres(base),
    )
    .await
}

/// Writes the inventory, runs the daemon with the consumer beside it until Ctrl-C
/// or `--duration`, and prints the final status.
async fn watch(args: &DemoArgs, dir: &Path, inventory: String, target: Target) -> Result<ExitCode> {
    let inv_path = dir.join("inventory.yaml");
    std::fs::write(&inv_path, inventory)?;
    let checked = crate::inventory::load(&inv_path)?;
    println!("inventory: {}", inv_path.display());
    println!("secrets:   {}/secrets/<account>.json", dir.display());
    println!("ledger:    {}/state.db", dir.display());
    let accounts: Vec<String> = checked
        .inventory
        .accounts
        .values()
        .map(|a| describe(a, Utc::now()))
        .collect();
    println!("accounts:  {}", accounts.join(", "));
    println!("watch below: the daemon's log (stderr) and a consumer that logs in with the published secrets.");
    println!(
        "press Ctrl-C to stop{}\n",
        args.duration
            .map(|d| format!(" (or wait {})", humantime::format_duration(d)))
            .unwrap_or_default()
    );
    let accounts: Vec<String> = checked.inventory.accounts.keys().cloned().collect();
    let ctx = Arc::new(crate::cli::context(checked.inventory, Arc::new(SystemClock), false).await?);
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let duration = args.duration;
    let shutdown = async move {
        match duration {
            Some(d) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = tokio::time::sleep(d) => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    let watcher = tokio::spawn(consumer(target, dir.join("secrets"), accounts.clone()));
    let res = crate::scheduler::run(ctx.clone(), rx, shutdown).await;
    watcher.abort();
    let _ = watcher.await;
    println!("\nfinal status:");
    for s in crate::api::statuses(&ctx.inventory, &ctx.ledger, Utc::now()).await? {
        println!(
            "  {:<20} {:<11} {}",
            s.account,
            s.strategy,
            s.current
                .map(|c| format!("v{} {} expires {}", c.version, c.username, c.expires_at))
                .unwrap_or_else(|| "-".into())
        );
    }
    let events = ctx.ledger.events(0, i64::MAX).await?;
    println!("  {} events in the ledger", events.len());
    ctx.ledger.close().await;
    res?;
    Ok(ExitCode::SUCCESS)
}

/// Drops what the demo created on an external server.
async fn cleanup_external(url: &str, db: &str, prefix: &str) -> Result<()> {
    let base = PgConnectOptions::from_str(url)?.disable_statement_logging();
    let mut conn = base.connect().await?;
    conn.execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
        .await?;
    let roles: Vec<String> =
        sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname LIKE $1")
            .bind(format!("{prefix}%"))
            .fetch_all(&mut conn)
            .await?;
    for r in roles {
        conn.execute(
            format!(
                "DROP ROLE IF EXISTS {}",
                postgres_protocol::escape::escape_identifier(&r)
            )
            .as_str(),
        )
        .await?;
    }
    conn.close().await?;
    Ok(())
}

/// `x (ephemeral, every 20s, overlap 8s)`, from the account itself so that the
/// banner cannot drift from the inventory. A schedule whose fires are not
/// evenly spaced says so.
fn describe(a: &crate::inventory::Account, now: chrono::DateTime<Utc>) -> String {
    let strategy = a.strategy.as_str();
    let mut fires = vec![now];
    while fires.len() < 5 {
        match a.schedule.next_after(*fires.last().expect("not empty")) {
            Some(next) => fires.push(next),
            None => break,
        }
    }
    let gaps: std::collections::BTreeSet<i64> = fires[1..]
        .windows(2)
        .map(|w| (w[1] - w[0]).num_seconds())
        .collect();
    let every = match gaps.iter().collect::<Vec<_>>().as_slice() {
        [] => format!("on {:?}", a.schedule.expr()),
        [one] => format!("every {one}s"),
        many => format!(
            "at uneven intervals ({})",
            many.iter()
                .map(|g| format!("{g}s"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let overlap = if a.overlap.is_zero() {
        "no overlap".to_owned()
    } else {
        format!("overlap {}s", a.overlap.as_secs())
    };
    format!("{} ({strategy}, {every}, {overlap})", a.name)
}

#[cfg(test)]
mod banner_tests {
    use super::*;

    fn accounts(yaml: &str) -> Vec<String> {
        let path = std::path::Path::new("/demo/inventory.yaml");
        let checked = crate::inventory::parse(path, yaml).unwrap_or_else(|e| panic!("{e}"));
        let now = "2026-11-29T12:00:00Z".parse().unwrap();
        checked
            .inventory
            .accounts
            .values()
            .map(|a| describe(a, now))
            .collect()
    }

    #[test]
    fn the_banner_says_what_each_demo_schedule_does() {
        let dir = std::path::Path::new("/demo");
        let pg = accounts(&inventory_yaml(
            dir,
            "postgres://u@127.0.0.1:5432/app",
            None,
            "d_",
        ));
        assert_eq!(
            pg,
            [
                "d_billing (static, every 30s, no overlap)",
                "d_etl_nightly (ephemeral, every 20s, overlap 8s)",
                "d_report_gen (alternating, every 30s, overlap 10s)",
            ]
        );
    }

    #[test]
    fn an_uneven_schedule_is_not_called_every() {
        let dir = std::path::Path::new("/demo");
        let yaml = inventory_yaml(dir, "postgres://u@127.0.0.1:5432/app", None, "d_")
            .replace("15/30 * * * * *", "10/45 * * * * *");
        let got = accounts(&yaml);
        assert_eq!(
            got[0],
            "d_billing (static, at uneven intervals (15s, 45s), no overlap)"
        );
    }
}
