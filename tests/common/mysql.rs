//! Harness for the MariaDB tests: the throwaway server `scripts/test` starts
//! (general and binary logs on), one database and one least-privilege admin per
//! test, and clean-up even when the test fails.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use credrotd::clock::SharedClock;
use credrotd::rotation::Context;
use credrotd::secret::Secret;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{ConnectOptions, Connection, Row};

use super::{rand_u32, Published};

/// The DBA URL of the test server (a user with every privilege).
pub fn mysql_url() -> String {
    std::env::var("CREDROTD_TEST_MYSQL_URL").unwrap_or_else(|_| {
        panic!(
            "CREDROTD_TEST_MYSQL_URL is not set. Run the suite with ./scripts/test, which starts \
             a throwaway MariaDB with the general and binary logs on."
        )
    })
}

/// The server's general query log and binary log files.
pub fn mysql_logs() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from(
        std::env::var("CREDROTD_TEST_MYSQL_GENERAL_LOG").expect("CREDROTD_TEST_MYSQL_GENERAL_LOG"),
    )];
    let base = PathBuf::from(
        std::env::var("CREDROTD_TEST_MYSQL_BINLOG").expect("CREDROTD_TEST_MYSQL_BINLOG"),
    );
    let dir = base.parent().unwrap().to_owned();
    let stem = base.file_name().unwrap().to_string_lossy().into_owned();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(&format!("{stem}."))
        {
            out.push(e.path());
        }
    }
    assert!(out.len() >= 2, "the binary log exists: {out:?}");
    out
}

/// One test's database (`<tag>`), its admin `<tag>_admin` and a directory.
///
/// credrotd connects as `<tag>_admin`@'%', which holds only what README's "The
/// admin role" lists for MariaDB: CREATE USER, PROCESS, CONNECTION ADMIN,
/// SELECT on `mysql.*`, ALL on `credrotd.*`, and ALL on the test database WITH
/// GRANT OPTION. The test itself acts as the DBA.
pub struct MyDb {
    pub tag: String,
    pub dbname: String,
    pub url: String,
    pub password_file: PathBuf,
    pub dir: tempfile::TempDir,
    pub admin_user: String,
    base: MySqlConnectOptions,
}

impl MyDb {
    pub async fn new() -> MyDb {
        let base = MySqlConnectOptions::from_str(&mysql_url())
            .unwrap()
            .disable_statement_logging();
        let tag = format!("m{:07x}", rand_u32() & 0xfff_ffff);
        let admin = format!("{tag}_admin");
        let admin_pw = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let mut c = base.connect().await.expect("connect to the test MariaDB");
        for s in [
            format!("CREATE DATABASE `{tag}`"),
            format!(
                "CREATE USER '{admin}'@'%' IDENTIFIED BY PASSWORD '{}'",
                credrotd::engine::mysql::password::native_password(&Secret::new(admin_pw.clone()))
            ),
            format!("GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO '{admin}'@'%'"),
            format!("GRANT SELECT ON mysql.* TO '{admin}'@'%'"),
            format!("GRANT ALL ON credrotd.* TO '{admin}'@'%'"),
            format!("GRANT ALL ON `{tag}`.* TO '{admin}'@'%' WITH GRANT OPTION"),
        ] {
            sqlx::raw_sql(&s)
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        c.close().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("admin.pw");
        std::fs::write(&password_file, &admin_pw).unwrap();
        let url = format!(
            "mysql://{admin}@{}:{}/{tag}",
            base.get_host(),
            base.get_port()
        );
        MyDb {
            dbname: tag.clone(),
            tag,
            url,
            password_file,
            dir,
            admin_user: admin,
            base,
        }
    }

    /// An account name unique to this test.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.tag)
    }

    /// A DBA connection.
    pub async fn dba(&self) -> MySqlConnection {
        self.base.connect().await.unwrap()
    }

    /// Runs statements (separated by `;`) as the DBA, in the test database.
    pub async fn exec(&self, sql: &str) {
        let mut c = self
            .base
            .clone()
            .database(&self.dbname)
            .connect()
            .await
            .unwrap();
        sqlx::raw_sql(sql)
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.close().await.unwrap();
    }

    pub async fn query_strings(&self, sql: &str) -> Vec<String> {
        let mut c = self.dba().await;
        let rows = sqlx::raw_sql(sql)
            .fetch_all(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.close().await.unwrap();
        rows.iter()
            // Catalog and `_bin` columns come back as binary strings.
            .map(|r| {
                r.try_get::<String, _>(0).unwrap_or_else(|_| {
                    String::from_utf8_lossy(&r.try_get::<Vec<u8>, _>(0).unwrap()).into_owned()
                })
            })
            .collect()
    }

    pub async fn query_i64(&self, sql: &str) -> i64 {
        let mut c = self.dba().await;
        let v: i64 = sqlx::query_scalar(sql)
            .fetch_one(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.close().await.unwrap();
        v
    }

    /// Logs in as `user` to the test database.
    pub async fn login(&self, user: &str, password: &str) -> Result<MySqlConnection, sqlx::Error> {
        self.base
            .clone()
            .username(user)
            .password(password)
            .database(&self.dbname)
            .disable_statement_logging()
            .connect()
            .await
    }

    pub fn secrets_dir(&self) -> PathBuf {
        self.dir.path().join("secrets")
    }

    pub fn ledger_path(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    /// The inventory (database `main`, engine mariadb, a file store, a ledger)
    /// with `accounts` indented by two spaces; `db_extra` goes under the
    /// database entry (e.g. `    hosts: ["%", "localhost"]\n`).
    pub fn inventory_with(&self, db_extra: &str, accounts: &str) -> String {
        format!(
            "version: 1\nenvironment: development\nstate: sqlite://{ledger}\n\
             rotation: {{ concurrency: 8, retry_initial: 1s, retry_max: 5s }}\n\
             defaults: {{ schedule: \"0 0 3 * * *\", overlap: 1h, expiry_margin: 1h, store: local }}\n\
             databases:\n  main:\n    engine: mariadb\n    url: {url}\n    password_file: {pw}\n{db_extra}\
             stores:\n  local: {{ kind: file, dir: {secrets}, mode: \"0400\" }}\n\
             accounts:\n{accounts}",
            ledger = self.ledger_path().display(),
            url = self.url,
            pw = self.password_file.display(),
            secrets = self.secrets_dir().display(),
        )
    }

    pub fn write_inventory_with(&self, db_extra: &str, accounts: &str) -> PathBuf {
        let p = self.dir.path().join("inventory.yaml");
        std::fs::write(&p, self.inventory_with(db_extra, accounts)).unwrap();
        p
    }

    pub async fn context(&self, accounts: &str, clock: SharedClock) -> Context {
        self.context_with("", accounts, clock).await
    }

    pub async fn context_with(
        &self,
        db_extra: &str,
        accounts: &str,
        clock: SharedClock,
    ) -> Context {
        let path = self.write_inventory_with(db_extra, accounts);
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

    /// Users and roles whose names start with this test's tag, but the admin:
    /// `name@host` (roles: `name@`).
    pub async fn users(&self) -> Vec<String> {
        self.query_strings(&format!(
            "SELECT CONCAT(User, '@', Host) FROM mysql.user WHERE User LIKE '{tag}\\_%' \
             AND User <> '{tag}_admin' ORDER BY 1",
            tag = self.tag
        ))
        .await
    }
}

impl MyDb {
    /// The users of [`MyDb::users`] that are locked (`ACCOUNT LOCK`): they
    /// exist but cannot log in.
    pub async fn locked_users(&self) -> Vec<String> {
        self.query_strings(&format!(
            "SELECT CONCAT(User, '@', Host) FROM mysql.global_priv WHERE User LIKE '{tag}\\_%' \
             AND User <> '{tag}_admin' \
             AND JSON_VALUE(Priv, '$.account_locked') IN ('1', 'true') ORDER BY 1",
            tag = self.tag
        ))
        .await
    }
}

impl Drop for MyDb {
    fn drop(&mut self) {
        // On success and on panic: drop the database, every user and role of
        // this test, their markers and expiry events, so the server stays clean.
        let base = self.base.clone();
        let tag = self.tag.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let Ok(mut c) = base.connect().await else { return };
                let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS `{tag}`")).execute(&mut c).await;
                let rows = sqlx::query("SELECT CAST(User AS CHAR), CAST(Host AS CHAR), CAST(is_role AS CHAR) FROM mysql.user WHERE User LIKE ?")
                    .bind(format!("{tag}\\_%"))
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_default();
                for r in rows {
                    let (u, h, role): (String, String, String) = (r.get(0), r.get(1), r.get(2));
                    let stmt = if role == "Y" {
                        format!("DROP ROLE IF EXISTS '{u}'")
                    } else {
                        format!("DROP USER IF EXISTS '{u}'@'{h}'")
                    };
                    let _ = sqlx::raw_sql(&stmt).execute(&mut c).await;
                }
                // An anonymous user a test planted at a host of its own.
                let _ = sqlx::raw_sql(&format!("DROP USER IF EXISTS ''@'{tag}.invalid'")).execute(&mut c).await;
                let events: Vec<String> = sqlx::query_scalar("SELECT CAST(EVENT_NAME AS CHAR) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = 'credrotd' AND DEFINER LIKE ?")
                    .bind(format!("{tag}\\_admin@%"))
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_default();
                for e in events {
                    let _ = sqlx::raw_sql(&format!("DROP EVENT IF EXISTS credrotd.`{e}`")).execute(&mut c).await;
                }
                let _ = sqlx::query("DELETE FROM credrotd.managed WHERE name LIKE ?")
                    .bind(format!("{tag}\\_%"))
                    .execute(&mut c)
                    .await;
                let _ = c.close().await;
            });
        })
        .join();
    }
}
