//! `credrotd demo --engine mariadb`: the same story on a MariaDB server of its own,
//! started in the demo's temporary directory the way `scripts/lib/mariadb.sh`
//! starts the test server (`mariadb-install-db`, then `mariadbd` on a free loopback
//! port with its socket in the directory). credrotd connects as an admin that holds
//! only what docs/mysql.md lists (CREATE USER, PROCESS, CONNECTION ADMIN, SELECT on
//! `mysql.*`, ALL on `credrotd.*`, and what the accounts get WITH GRANT OPTION),
//! its password in a file. `--database-url mysql://…` uses an existing server
//! instead: a database, users and roles of the demo's own, dropped at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{ConnectOptions, Connection, Row};

use super::{free_port, watch, DemoArgs, Target, ADMIN};
use crate::engine::mysql::password::native_password;
use crate::secret::Secret;

/// The demo database on the demo's own server.
const DB: &str = "app";

/// A MariaDB server in a temporary directory, shut down on drop.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Finds a MariaDB server program on PATH or in the usual sbin directories
/// (`mariadbd` is in /usr/sbin on Debian, often not on a user's PATH).
/// `CREDROTD_MARIADB_BINDIR`, when set, is the only place looked at.
pub fn find_mariadb_binary(name: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CREDROTD_MARIADB_BINDIR") {
        let p = PathBuf::from(dir).join(name);
        return p.is_file().then_some(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/sbin",
        "/usr/local/sbin",
        "/usr/bin",
        "/usr/local/bin",
        "/opt/homebrew/bin",
        "/opt/homebrew/sbin",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// The tables and the static account's user, created by whoever stands for the
/// DBA (the init file on the demo's own server, the `--database-url` user
/// otherwise). One statement per line: the init file wants it so.
fn fixtures(db: &str, prefix: &str) -> Vec<String> {
    vec![
        format!("CREATE TABLE `{db}`.events (id BIGINT AUTO_INCREMENT PRIMARY KEY, at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, kind VARCHAR(100) NOT NULL)"),
        format!("CREATE TABLE `{db}`.orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer_id BIGINT NOT NULL, total DECIMAL(10,2) NOT NULL)"),
        format!("CREATE TABLE `{db}`.customers (id BIGINT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL)"),
        format!("INSERT INTO `{db}`.customers (name) VALUES ('Ada'), ('Grace')"),
        format!("INSERT INTO `{db}`.orders (customer_id, total) VALUES (1, 42.00), (2, 17.50)"),
        // The static strategy manages an existing user; create it the way an
        // operator's provisioning would (locked until credrotd sets a password).
        format!("CREATE USER '{prefix}billing_svc'@'%' ACCOUNT LOCK"),
    ]
}

/// The admin credrotd connects as, with the least privileges it needs.
fn admin_statements(password: &Secret) -> Vec<String> {
    let a = format!("'{ADMIN}'@'%'");
    vec![
        format!(
            "CREATE USER {a} IDENTIFIED BY PASSWORD '{}'",
            native_password(password)
        ),
        format!("GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO {a}"),
        format!("GRANT SELECT ON mysql.* TO {a}"),
        format!("GRANT ALL ON credrotd.* TO {a}"),
        // What the accounts below get, to grant on.
        format!("GRANT SELECT, INSERT, UPDATE ON `{DB}`.* TO {a} WITH GRANT OPTION"),
    ]
}

/// Initialises a data directory and starts `mariadbd` on a free loopback port.
/// The init file creates the database, its tables, the static user and the admin
/// before the server accepts connections; it is removed once the server is up.
async fn start_server(dir: &Path, admin_password: &Secret) -> Result<(Server, u16)> {
    let (Some(install_db), Some(mariadbd)) = (
        find_mariadb_binary("mariadb-install-db"),
        find_mariadb_binary("mariadbd"),
    ) else {
        bail!(
            "the MariaDB server programs (mariadb-install-db, mariadbd) are not installed.\n\
             Install them (Debian/Ubuntu: `apt-get install mariadb-server`; Fedora/RHEL: `dnf install mariadb-server`;\n\
             macOS: `brew install mariadb`), or point the demo at a server: \
             `credrotd demo --engine mariadb --database-url mysql://admin@host:3306/mysql`"
        );
    };
    // mariadbd refuses to run as root unless told to.
    let root = nix::unistd::geteuid().is_root();
    let data = dir.join("mariadb-data");
    let mut cmd = Command::new(&install_db);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()));
    if root {
        cmd.arg("--user=root");
    }
    cmd.args(["--auth-root-authentication-method=socket", "--skip-test-db"]);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("running mariadb-install-db")?;
    if !out.status.success() {
        bail!(
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let init = dir.join("init.sql");
    let mut sql = vec![format!("CREATE DATABASE `{DB}`")];
    sql.extend(fixtures(DB, ""));
    sql.extend(admin_statements(admin_password));
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&init)?;
        for s in &sql {
            writeln!(f, "{s};")?;
        }
    }

    let port = free_port()?;
    let log = dir.join("mariadb.log");
    let mut cmd = Command::new(&mariadbd);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()));
    if root {
        cmd.arg("--user=root");
    }
    cmd.arg(format!("--port={port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--socket={}", dir.join("mariadb.sock").display()))
        .arg(format!("--pid-file={}", dir.join("mariadb.pid").display()))
        .arg(format!("--log-error={}", log.display()))
        .arg(format!("--init-file={}", init.display()))
        .args([
            "--skip-name-resolve",
            "--event-scheduler=ON",
            "--innodb-buffer-pool-size=64M",
            "--innodb-flush-log-at-trx-commit=0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    {
        // Its own process group: Ctrl-C in the terminal reaches the demo, which
        // then shuts the server down in order.
        use std::os::unix::process::CommandExt as _;
        cmd.process_group(0);
    }
    let mut server = Server {
        child: cmd.spawn().context("starting mariadbd")?,
        log,
    };

    // Up when the admin (created by the init file, before the server listens)
    // can log in.
    let opts = MySqlConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username(ADMIN)
        .password(admin_password.expose())
        .database(DB)
        .disable_statement_logging();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.child.try_wait()? {
            let _ = std::fs::remove_file(&init);
            bail!("mariadbd exited ({status}):\n{}", server.log_tail());
        }
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(5), opts.connect()).await {
            let _ = c.close().await;
            break;
        }
        if Instant::now() > deadline {
            let _ = std::fs::remove_file(&init);
            bail!(
                "MariaDB did not accept the admin within 60s:\n{}",
                server.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::fs::remove_file(&init)?;
    Ok((server, port))
}

/// Decodes `%XX` escapes (URL user info).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `--database-url` with the demo database as its path and without its
/// password, which is returned apart (the inventory reads it from a file).
fn admin_url(url: &str, db: &str) -> Result<(String, Option<Secret>)> {
    let mut u = url::Url::parse(url).map_err(|e| anyhow::anyhow!("--database-url: {e}"))?;
    let password = u.password().map(|p| Secret::new(percent_decode(p)));
    let _ = u.set_password(None);
    u.set_path(&format!("/{db}"));
    Ok((u.to_string(), password))
}

/// sqlx reads `mysql://`; `mariadb://` is the same protocol.
fn options(url: &str) -> Result<MySqlConnectOptions> {
    let url = match url.strip_prefix("mariadb://") {
        Some(rest) => format!("mysql://{rest}"),
        None => url.to_owned(),
    };
    Ok(MySqlConnectOptions::from_str(&url)
        .context("--database-url")?
        .disable_statement_logging())
}

async fn exec(conn: &mut MySqlConnection, sql: &str) -> Result<()> {
    sqlx::raw_sql(sql)
        .execute(&mut *conn)
        .await
        .with_context(|| sql.to_owned())?;
    Ok(())
}

/// Runs the demo on MariaDB.
pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    if let Some(url) = &args.database_url {
        if !(url.starts_with("mysql://") || url.starts_with("mariadb://")) {
            // Name only the scheme: the rest of a URL may carry a password.
            let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("(none)");
            bail!("--database-url: with --engine mariadb, expected mysql://user@host:port/db, found a URL with scheme {scheme:?}");
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix("credrotd-demo-")
        .tempdir()?;
    let dir = tmp.path().to_owned();
    let pwfile = dir.join("admin.password");
    let (server, url, db, prefix, created);
    match &args.database_url {
        None => {
            println!(
                "starting a throwaway MariaDB server in {} ...",
                dir.display()
            );
            let admin_password = Secret::generate();
            let (s, port) = start_server(&dir, &admin_password).await?;
            server = Some(s);
            write_password(&pwfile, &admin_password)?;
            url = format!("mysql://{ADMIN}@127.0.0.1:{port}/{DB}");
            db = DB.to_owned();
            prefix = String::new();
            created = None;
        }
        Some(given) => {
            server = None;
            let tag: u16 = rand::random();
            prefix = format!("demo{tag:04x}_");
            db = format!("credrotd_demo_{tag:04x}");
            let mut conn = options(given)?.connect().await?;
            exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await?;
            created = Some(given.clone());
            let mut setup = Ok(());
            for s in fixtures(&db, &prefix) {
                setup = exec(&mut conn, &s).await;
                if setup.is_err() {
                    break;
                }
            }
            let _ = conn.close().await;
            let split = setup.and_then(|()| admin_url(given, &db));
            match split {
                Ok((u, password)) => {
                    url = u;
                    if let Some(p) = password {
                        write_password(&pwfile, &p)?;
                    }
                }
                Err(e) => {
                    if let Err(c) = cleanup_external(given, &db, &prefix).await {
                        eprintln!(
                            "warning: demo clean-up on the external server was incomplete: {c:#}"
                        );
                    }
                    return Err(e);
                }
            }
        }
    }

    let pw = pwfile.exists().then_some(pwfile.as_path());
    let result = async {
        let target = Target::Mysql(options(&url)?);
        watch(
            &args,
            &dir,
            inventory_yaml(&dir, &url, pw, &db, &prefix),
            target,
        )
        .await
    }
    .await;

    if let Some(given) = &created {
        if let Err(e) = cleanup_external(given, &db, &prefix).await {
            eprintln!("warning: demo clean-up on the external server was incomplete: {e:#}");
        }
    }
    drop(server);
    if args.keep {
        let kept = tmp.keep();
        println!("kept {}", kept.display());
    }
    result
}

fn write_password(path: &Path, password: &Secret) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(password.expose().as_bytes())?;
    Ok(())
}

fn inventory_yaml(dir: &Path, url: &str, pwfile: Option<&Path>, db: &str, prefix: &str) -> String {
    let password = pwfile
        .map(|p| format!("\n    password_file: {}", p.display()))
        .unwrap_or_default();
    format!(
        r#"# Written by `credrotd demo --engine mariadb`. Schedules are seconds apart so that you can watch.
version: 1
environment: development
state: sqlite://{dir}/state.db
rotation: {{ concurrency: 4, retry_initial: 5s, retry_max: 30s }}
defaults: {{ overlap: 8s, expiry_margin: 30s, store: local }}
databases:
  app:
    engine: mariadb
    url: {url}{password}
stores:
  local: {{ kind: file, dir: {dir}/secrets, mode: "0400" }}
accounts:
  {prefix}etl_nightly:
    database: app
    purpose: Nightly ETL into the events table
    owner: data-platform
    strategy: ephemeral
    schedule: "*/20 * * * * *"
    grants:
      - {{ schema: {db}, tables: [events], privileges: [SELECT, INSERT, UPDATE] }}
      - {{ schema: {db}, tables: [orders, customers], privileges: [SELECT] }}
    connection_limit: 5
  {prefix}report_gen:
    database: app
    purpose: Monthly report generator (pins its username)
    owner: finance
    strategy: alternating
    schedule: "5/30 * * * * *"
    overlap: 10s
    grants:
      - {{ schema: {db}, tables: [orders], privileges: [SELECT] }}
  {prefix}billing:
    database: app
    purpose: Legacy billing service with a fixed user
    owner: payments
    strategy: static
    role: {prefix}billing_svc
    overlap: 0s
    schedule: "15/30 * * * * *"
    grants:
      - {{ schema: {db}, tables: [customers], privileges: [SELECT] }}
"#,
        dir = dir.display()
    )
}

/// Drops what the demo created on an external server: its database, every user
/// and role named with its prefix, their expiry events and marker rows.
async fn cleanup_external(url: &str, db: &str, prefix: &str) -> Result<()> {
    let mut conn = options(url)?.connect().await?;
    exec(&mut conn, &format!("DROP DATABASE IF EXISTS `{db}`")).await?;
    let like = format!("{}%", prefix.replace('_', "\\_"));
    let rows = sqlx::query(
        "SELECT CAST(User AS CHAR), CAST(Host AS CHAR), CAST(is_role AS CHAR) FROM mysql.user WHERE User LIKE ?",
    )
    .bind(&like)
    .fetch_all(&mut conn)
    .await?;
    for r in rows {
        let (user, host, role): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let stmt = if role == "Y" {
            format!("DROP ROLE IF EXISTS '{user}'")
        } else {
            format!("DROP USER IF EXISTS '{user}'@'{host}'")
        };
        exec(&mut conn, &stmt).await?;
    }
    // The marker table and the events exist once credrotd ran there.
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(EVENT_NAME AS CHAR) FROM information_schema.EVENTS \
         WHERE EVENT_SCHEMA = 'credrotd' AND EVENT_DEFINITION LIKE ?",
    )
    .bind(format!("%'{like}"))
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    for e in events {
        exec(&mut conn, &format!("DROP EVENT IF EXISTS credrotd.`{e}`")).await?;
    }
    let _ = sqlx::query("DELETE FROM credrotd.managed WHERE name LIKE ?")
        .bind(&like)
        .execute(&mut conn)
        .await;
    conn.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_url_names_the_demo_database_and_leaves_the_password_apart() {
        let (url, pw) = admin_url(
            "mysql://dba:p%40ss%2Bx%zz@db1:3306/mysql?ssl-mode=DISABLED",
            "credrotd_demo_00ff",
        )
        .unwrap();
        assert_eq!(
            url,
            "mysql://dba@db1:3306/credrotd_demo_00ff?ssl-mode=DISABLED"
        );
        assert_eq!(pw.unwrap().expose(), "p@ss+x%zz");
        let (url, pw) = admin_url("mariadb://dba@db1", "d").unwrap();
        assert_eq!(url, "mariadb://dba@db1/d");
        assert!(pw.is_none());
    }
}
