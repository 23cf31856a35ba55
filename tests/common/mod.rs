//! Shared harness for the integration tests: a real PostgreSQL that checks
//! passwords (started by `scripts/test`), one database and a unique role prefix
//! per test, and clean-up even when the test fails.

#![allow(dead_code)]

pub mod mysql;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use credrotd::clock::SharedClock;
use credrotd::rotation::Context;
use credrotd::secret::Secret;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Executor};

/// The admin URL of the test cluster.
pub fn pg_url() -> String {
    std::env::var("CREDROTD_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "CREDROTD_TEST_PG_URL is not set. Run the suite with ./scripts/test, which starts a \
             PostgreSQL with scram-sha-256 authentication for it."
        )
    })
}

/// The test cluster's statement log (log_statement=all).
pub fn pg_log() -> PathBuf {
    PathBuf::from(
        std::env::var("CREDROTD_TEST_PG_LOG").expect("CREDROTD_TEST_PG_LOG (run ./scripts/test)"),
    )
}

fn split_password(url: &str) -> (String, String) {
    // postgres://user:password@host:port/db
    let (scheme, rest) = url.split_once("://").expect("url scheme");
    let (userinfo, hostpart) = rest.rsplit_once('@').expect("url userinfo");
    let (user, pw) = userinfo.split_once(':').expect("url password");
    (format!("{scheme}://{user}@{hostpart}"), pw.to_owned())
}

/// The TLS-only test cluster's superuser URL (with password, no TLS options)
/// and the CA that signed its certificate (`start_test_pg_tls` in
/// `scripts/lib/pg.sh`).
pub fn pg_tls() -> (String, PathBuf) {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set. Run the suite with ./scripts/test, which starts a \
                 PostgreSQL that takes only TLS for it."
            )
        })
    };
    (
        var("CREDROTD_TEST_PG_TLS_URL"),
        PathBuf::from(var("CREDROTD_TEST_PG_TLS_CA")),
    )
}

/// One test's own database, role-name prefix and temporary directory.
///
/// By default credrotd connects as a per-test **non-superuser** admin,
/// `<tag>_admin LOGIN CREATEROLE`, a member of `pg_signal_backend`: the kind of
/// admin managed PostgreSQL (RDS, Cloud SQL, Azure) gives. It can grant what the
/// cluster's superuser creates in the test database through default privileges
/// `WITH GRANT OPTION` (as the master user's objects are on RDS), and it is a
/// member of `<tag>_owner`, a role that may own schemas (as an application's
/// owner role would), so that it may set default privileges for that owner.
/// [`TestDb::new_superuser`] connects credrotd as the superuser instead.
///
/// The test itself (`exec`, `admin()`, `query_*`) acts as the superuser: the
/// DBA who creates tables and changes things behind credrotd's back.
pub struct TestDb {
    pub tag: String,
    pub dbname: String,
    /// credrotd's admin URL of the test database, without password.
    pub url: String,
    /// credrotd's admin password.
    pub password_file: PathBuf,
    pub dir: tempfile::TempDir,
    /// The role credrotd connects as (`<tag>_admin`, or the superuser).
    pub admin_user: String,
    /// Whether credrotd connects as the superuser.
    pub superuser: bool,
    /// `<tag>_owner`: a NOLOGIN role the non-superuser admin is a member of, to
    /// own schemas whose future objects credrotd may then cover.
    pub owner: String,
    admin_password: String,
    /// The superuser, connected to the test database.
    base: PgConnectOptions,
}

impl TestDb {
    /// A test database that credrotd manages as a non-superuser `CREATEROLE` admin.
    pub async fn new() -> TestDb {
        Self::create(false).await
    }

    /// A test database that credrotd manages as the cluster's superuser, for the
    /// tests that need what only a superuser may do (e.g. read `pg_authid` to
    /// put back a static role's password).
    pub async fn new_superuser() -> TestDb {
        Self::create(true).await
    }

    /// A test database on another cluster: `cluster_url` is its superuser URL
    /// with password, and may carry a query (`?sslmode=verify-full&sslrootcert=…`)
    /// that every connection, credrotd's included, then uses.
    pub async fn new_on(cluster_url: &str) -> TestDb {
        Self::create_on(cluster_url, false).await
    }

    async fn create(superuser: bool) -> TestDb {
        Self::create_on(&pg_url(), superuser).await
    }

    async fn create_on(cluster_url: &str, superuser: bool) -> TestDb {
        let (cluster_url, query) = match cluster_url.split_once('?') {
            Some((u, q)) => (u, format!("?{q}")),
            None => (cluster_url, String::new()),
        };
        let (url, pw) = split_password(cluster_url);
        let tag = format!("t{:08x}", rand_u32());
        let dbname = format!("credrotd_{tag}");
        let base = PgConnectOptions::from_str(&format!("{url}{query}"))
            .unwrap()
            .password(&pw)
            .log_statements(log::LevelFilter::Off);
        let su = base.get_username().to_owned();
        let owner = format!("{tag}_owner");
        let mut c = base
            .clone()
            .connect()
            .await
            .expect("connect to the test cluster");
        c.execute(format!("CREATE DATABASE {dbname}").as_str())
            .await
            .unwrap();
        c.execute(format!("CREATE ROLE {owner} NOLOGIN").as_str())
            .await
            .unwrap();
        let (admin_user, admin_password) = if superuser {
            (su.clone(), pw.clone())
        } else {
            let admin = format!("{tag}_admin");
            let admin_pw = format!(
                "{:016x}{:016x}",
                rand::random::<u64>(),
                rand::random::<u64>()
            );
            // As a SCRAM verifier: the statement log never sees the password.
            let verifier = postgres_protocol::password::scram_sha_256(admin_pw.as_bytes());
            c.execute(
                format!(
                    "CREATE ROLE {admin} LOGIN CREATEROLE PASSWORD '{verifier}' IN ROLE pg_signal_backend;
                     GRANT {owner} TO {admin}"
                )
                .as_str(),
            )
            .await
            .unwrap();
            (admin, admin_pw)
        };
        c.close().await.unwrap();
        if !superuser {
            // What the superuser creates in the test database, the admin may grant.
            let mut c = base.clone().database(&dbname).connect().await.unwrap();
            let a = &admin_user;
            c.execute(
                format!(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {su} GRANT ALL ON TABLES TO {a} WITH GRANT OPTION;
                     ALTER DEFAULT PRIVILEGES FOR ROLE {su} GRANT ALL ON SEQUENCES TO {a} WITH GRANT OPTION;
                     ALTER DEFAULT PRIVILEGES FOR ROLE {su} GRANT ALL ON FUNCTIONS TO {a} WITH GRANT OPTION;
                     ALTER DEFAULT PRIVILEGES FOR ROLE {su} GRANT ALL ON SCHEMAS TO {a} WITH GRANT OPTION;
                     GRANT ALL ON SCHEMA public TO {a} WITH GRANT OPTION"
                )
                .as_str(),
            )
            .await
            .unwrap();
            c.close().await.unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("admin.pw");
        std::fs::write(&password_file, &admin_password).unwrap();
        let db_url = match url.rsplit_once('/') {
            Some((server, _)) => {
                let (scheme, rest) = server.split_once("://").unwrap();
                let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
                format!("{scheme}://{admin_user}@{host}/{dbname}{query}")
            }
            None => unreachable!(),
        };
        TestDb {
            tag,
            dbname: dbname.clone(),
            url: db_url,
            password_file,
            dir,
            admin_user,
            superuser,
            owner,
            admin_password,
            base: base.database(&dbname),
        }
    }

    /// An account name unique to this test.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.tag)
    }

    /// A superuser connection to the test database (the test's DBA).
    pub async fn admin(&self) -> PgConnection {
        self.base.clone().connect().await.expect("admin connection")
    }

    /// A connection as the role credrotd connects as.
    pub async fn daemon_admin(&self) -> PgConnection {
        self.base
            .clone()
            .username(&self.admin_user)
            .password(&self.admin_password)
            .connect()
            .await
            .expect("connection as credrotd's admin")
    }

    /// Runs `sql` as the role credrotd connects as.
    pub async fn exec_as_daemon_admin(&self, sql: &str) {
        let mut c = self.daemon_admin().await;
        c.execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.close().await.unwrap();
    }

    /// Lets credrotd's admin set a placeholder parameter such as `app.tenant_id`
    /// on roles (`GRANT SET ON PARAMETER`, which a non-superuser needs for
    /// account `settings:`). Undone by the clean-up's `DROP OWNED`.
    pub async fn grant_parameter(&self, name: &str) {
        if !self.superuser {
            self.exec(&format!(
                "GRANT SET ON PARAMETER {name} TO {}",
                self.admin_user
            ))
            .await;
        }
    }

    /// Another database of this test (dropped with it), created by the superuser;
    /// returns its name.
    pub async fn other_database(&self, suffix: &str) -> String {
        let name = format!("{}_{suffix}", self.dbname);
        let mut c = self
            .base
            .clone()
            .database("postgres")
            .connect()
            .await
            .unwrap();
        c.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        c.close().await.unwrap();
        name
    }

    /// Runs `sql` as the superuser in database `dbname` of the cluster.
    pub async fn exec_in(&self, dbname: &str, sql: &str) {
        let mut c = self.base.clone().database(dbname).connect().await.unwrap();
        c.execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.close().await.unwrap();
    }

    pub async fn exec(&self, sql: &str) {
        let mut c = self.admin().await;
        c.execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.close().await.unwrap();
    }

    pub async fn query_bool(&self, sql: &str) -> bool {
        let mut c = self.admin().await;
        let v: bool = sqlx::query_scalar(sql)
            .fetch_one(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.close().await.unwrap();
        v
    }

    pub async fn query_strings(&self, sql: &str) -> Vec<String> {
        let mut c = self.admin().await;
        let v: Vec<String> = sqlx::query_scalar(sql)
            .fetch_all(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.close().await.unwrap();
        v
    }

    /// Logs in as an application would (with the cluster's TLS options).
    pub async fn login(&self, user: &str, password: &str) -> Result<PgConnection, sqlx::Error> {
        self.base
            .clone()
            .username(user)
            .password(password)
            .connect()
            .await
    }

    pub fn secrets_dir(&self) -> PathBuf {
        self.dir.path().join("secrets")
    }

    pub fn ledger_path(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    /// The inventory header (database, file store, ledger) followed by `accounts`,
    /// a YAML block indented by two spaces under `accounts:`.
    pub fn inventory(&self, accounts: &str) -> String {
        self.inventory_with("", accounts)
    }

    /// Like [`TestDb::inventory`], with `top` (whole top-level lines such as
    /// `admin:` or `metrics:`) added.
    pub fn inventory_with(&self, top: &str, accounts: &str) -> String {
        format!(
            "version: 1\nenvironment: development\nstate: sqlite://{ledger}\n{top}\
             rotation: {{ concurrency: 8, retry_initial: 1s, retry_max: 5s }}\n\
             defaults: {{ schedule: \"0 0 3 * * *\", overlap: 1h, expiry_margin: 1h, store: local }}\n\
             databases:\n  main:\n    engine: postgres\n    url: {url}\n    password_file: {pw}\n\
             stores:\n  local: {{ kind: file, dir: {secrets}, mode: \"0400\" }}\n\
             accounts:\n{accounts}",
            ledger = self.ledger_path().display(),
            url = self.url,
            pw = self.password_file.display(),
            secrets = self.secrets_dir().display(),
        )
    }

    pub fn write_inventory(&self, accounts: &str) -> PathBuf {
        self.write_inventory_with("", accounts)
    }

    pub fn write_inventory_with(&self, top: &str, accounts: &str) -> PathBuf {
        let p = self.dir.path().join("inventory.yaml");
        std::fs::write(&p, self.inventory_with(top, accounts)).unwrap();
        p
    }

    /// A saga context over this test's inventory.
    pub async fn context(&self, accounts: &str, clock: SharedClock) -> Context {
        let path = self.write_inventory(accounts);
        let checked = credrotd::inventory::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let inventory = checked.inventory;
        let ledger = credrotd::ledger::Ledger::open(&inventory.state)
            .await
            .unwrap();
        Context {
            engines: credrotd::engine::build(&inventory).unwrap(),
            stores: credrotd::store::build(&inventory),
            inventory: Arc::new(inventory),
            ledger,
            clock,
            take_over: Default::default(),
            crash_after: None,
        }
    }

    /// What the file store holds for an account.
    pub fn published(&self, account: &str) -> Published {
        let bytes = std::fs::read(self.secrets_dir().join(format!("{account}.json")))
            .unwrap_or_else(|e| panic!("no secret for {account}: {e}"));
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        Published {
            username: v["username"].as_str().unwrap().to_owned(),
            password: Secret::new(v["password"].as_str().unwrap().to_owned()),
            version: v["version"].as_i64().unwrap(),
            expires_at: v["expires_at"].as_str().unwrap().to_owned(),
        }
    }

    /// The privilege role (`credrotd_p_…`) the scoped role `scoped` is a member
    /// of: the holder of its object privileges.
    pub async fn privilege_role(&self, scoped: &str) -> String {
        let roles = self
            .query_strings(&format!(
                "SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                 WHERE m.member = '{scoped}'::regrole AND g.rolname LIKE 'credrotd\\_p\\_%'"
            ))
            .await;
        assert_eq!(roles.len(), 1, "privilege roles of {scoped}: {roles:?}");
        roles.into_iter().next().unwrap()
    }

    /// Roles whose names start with this test's tag, but for the harness's own
    /// (`<tag>_admin`, `<tag>_owner`).
    pub async fn roles(&self) -> Vec<String> {
        self.query_strings(&format!(
            "SELECT rolname::text FROM pg_roles WHERE rolname LIKE '{tag}%' \
             AND rolname NOT IN ('{tag}_admin', '{tag}_owner') ORDER BY 1",
            tag = self.tag
        ))
        .await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Runs on success and on panic: drop the database and every role of this
        // test so that the shared cluster stays clean.
        // The per-test admin goes last: it granted what the database holds.
        let base = self.base.clone().database("postgres");
        let dbname = self.dbname.clone();
        let tag = self.tag.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let Ok(mut c) = base.connect().await else { return };
                let dbs: Vec<String> = sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datname = $1 OR datname LIKE $2")
                    .bind(&dbname)
                    .bind(format!("{dbname}\\_%"))
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_default();
                for db in &dbs {
                    let _ = c.execute(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)").as_str()).await;
                }
                // The privilege roles credrotd made for grants in those databases.
                let privilege_roles: Vec<String> = sqlx::query_scalar(
                    "SELECT r.rolname::text FROM pg_roles r
                     WHERE shobj_description(r.oid, 'pg_authid') LIKE 'credrotd:privileges set=% database=%'
                       AND split_part(shobj_description(r.oid, 'pg_authid'), ' database=', 2) = ANY($1)",
                )
                .bind(&dbs)
                .fetch_all(&mut c)
                .await
                .unwrap_or_default();
                for r in privilege_roles {
                    let _ = c.execute(format!("DROP OWNED BY \"{r}\"").as_str()).await;
                    let _ = c.execute(format!("DROP ROLE IF EXISTS \"{r}\"").as_str()).await;
                }
                let roles: Vec<String> = sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname LIKE $1 ORDER BY rolname = $2, length(rolname) DESC")
                    .bind(format!("{tag}%"))
                    .bind(format!("{tag}_admin"))
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_default();
                for r in roles {
                    // DROP OWNED here also revokes grants on shared objects
                    // (parameters, databases) that would keep the role.
                    let _ = c.execute(format!("DROP OWNED BY \"{r}\"").as_str()).await;
                    let _ = c.execute(format!("DROP ROLE IF EXISTS \"{r}\"").as_str()).await;
                }
                let _ = c.close().await;
            });
        })
        .join();
    }
}

pub struct Published {
    pub username: String,
    pub password: Secret,
    pub version: i64,
    pub expires_at: String,
}

pub fn rand_u32() -> u32 {
    rand::random()
}

/// Asserts that none of `secrets` occurs in `haystack`.
pub fn assert_no_secret(what: &str, haystack: &[u8], secrets: &[String]) {
    for s in secrets {
        assert!(s.len() >= 16, "a test secret is too short to search for");
        let found = haystack.windows(s.len()).any(|w| w == s.as_bytes());
        assert!(!found, "a password appears in {what}");
    }
}

pub fn read_all(paths: &[&Path]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in paths {
        if let Ok(b) = std::fs::read(p) {
            out.extend(b);
        }
    }
    out
}

/// Polls `f` every 100 ms until it holds, or fails the test after `limit`.
pub fn wait_until(what: &str, limit: std::time::Duration, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// The version the file store holds for an account (0 if none yet).
pub fn version_of(db: &TestDb, account: &str) -> i64 {
    std::fs::read(db.secrets_dir().join(format!("{account}.json")))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["version"].as_i64())
        .unwrap_or(0)
}

/// Runs the `credrotd` binary with `-c config` and `args` (no inherited
/// `CREDROTD_CONFIG`), to completion.
pub fn run_credrotd(args: &[&str], config: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_credrotd"))
        .env_remove("CREDROTD_CONFIG")
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .expect("run credrotd")
}

/// A finished command's stdout then stderr, as text.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
