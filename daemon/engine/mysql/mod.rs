//! MySQL 8 and MariaDB (`engine: mysql` / `engine: mariadb`): scoped roles, users
//! per host pattern, reconciliation from the grant tables, and revocation that
//! locks, ends sessions and drops every host variant.
//!
//! The server is detected at the first connection (`VERSION()`): MariaDB gets
//! `mysql_native_password` hashes (`IDENTIFIED BY PASSWORD '*…'`), MySQL 8
//! `caching_sha2_password` strings (`IDENTIFIED WITH caching_sha2_password AS
//! 0x…`), both computed here ([`password`]), so no plaintext password is ever in a
//! statement, the general log or the binary log. Account DDL is sent as text with
//! `sql_mode` pinned to [`sql::SQL_MODE`] and every name quoted by [`sql`].
//!
//! Neither server can comment a role or user on every version credrotd supports,
//! so what credrotd manages is recorded in a table of its own,
//! `credrotd.managed`: one row per scoped role and per login (name, kind, account,
//! owning ledger, last claim, intended expiry). A role without a row is not
//! credrotd's. docs/mysql.md is the operator's reference.

mod audit;
pub mod password;
pub mod rules;
pub mod sql;

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use sha1::{Digest, Sha1};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{ConnectOptions, Connection, Executor, MySql};

use super::{
    valid_ledger_id, AdminGap, Change, Endpoint, Engine, EngineError, Login, LoginInfo, Owner,
    Reconciled, SavedPassword, Stuck,
};
use crate::inventory::{Account, Database, EngineKind, ObjectKind, Objects, Strategy};
use crate::secret::Secret;

/// The database holding credrotd's marker table and expiry events.
const MARKER_DB: &str = "credrotd";

/// What the server is, learnt at the first connection.
#[derive(Debug, Clone)]
struct Server {
    mariadb: bool,
    /// `VERSION()`, e.g. `10.11.6-MariaDB-0+deb12u1` or `8.0.36`.
    version: String,
    /// Whether `@@event_scheduler` is `ON`: expiry events are created only then.
    events: bool,
}

impl Server {
    /// The host part of a role: MariaDB roles have none (`''` in the grant
    /// tables), MySQL 8 roles are accounts at `'%'`.
    fn role_host(&self) -> &'static str {
        if self.mariadb {
            ""
        } else {
            "%"
        }
    }

    fn name(&self) -> String {
        let v = self.version.split('-').next().unwrap_or(&self.version);
        if self.mariadb {
            format!("MariaDB {v}")
        } else {
            format!("MySQL {v}")
        }
    }
}

/// What `credrotd.managed` says about a name.
#[derive(Debug, Clone)]
struct Marker {
    kind: String,
    account: String,
    owner: Option<String>,
    seen: Option<DateTime<Utc>>,
    valid_until: Option<DateTime<Utc>>,
}

/// `credrotd.managed`'s kind, account, owner, seen and valid_until columns.
type MarkerRow = (
    String,
    String,
    Option<String>,
    Option<NaiveDateTime>,
    Option<NaiveDateTime>,
);

/// One host variant of a user or role, from the grant tables.
#[derive(Debug, Clone)]
struct UserRow {
    host: String,
    is_role: bool,
    locked: bool,
    /// Unix seconds of the last password change.
    last_changed: Option<i64>,
    plugin: String,
    auth: String,
}

/// An object privileges are granted on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// `db.*`, by the pattern the grant tables store (`_`, `%` and `\` escaped).
    Db(String),
    Table(String, String),
    /// `FUNCTION` or `PROCEDURE`, database, name.
    Routine(&'static str, String, String),
}

impl Target {
    fn sql(&self) -> Result<String, sql::QuoteError> {
        Ok(match self {
            Target::Db(pattern) => format!("{}.*", sql::ident(pattern)?),
            Target::Table(d, t) => format!("{}.{}", sql::ident(d)?, sql::ident(t)?),
            Target::Routine(k, d, n) => format!("{k} {}.{}", sql::ident(d)?, sql::ident(n)?),
        })
    }
}

/// Privileges held on one target, and whether with GRANT OPTION.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Held {
    privileges: BTreeSet<String>,
    grant_option: bool,
}

/// The `db.*` pattern for exactly the database `name`: the grant tables read
/// `_` and `%` in a database-level grant as wildcards.
fn db_pattern(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    for c in name.chars() {
        if matches!(c, '_' | '%' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The columns of `mysql.db` and the privilege each one stands for.
const DB_COLUMNS: &[(&str, &str)] = &[
    ("Select_priv", "SELECT"),
    ("Insert_priv", "INSERT"),
    ("Update_priv", "UPDATE"),
    ("Delete_priv", "DELETE"),
    ("Create_priv", "CREATE"),
    ("Drop_priv", "DROP"),
    ("References_priv", "REFERENCES"),
    ("Index_priv", "INDEX"),
    ("Alter_priv", "ALTER"),
    ("Create_tmp_table_priv", "CREATE TEMPORARY TABLES"),
    ("Lock_tables_priv", "LOCK TABLES"),
    ("Create_view_priv", "CREATE VIEW"),
    ("Show_view_priv", "SHOW VIEW"),
    ("Create_routine_priv", "CREATE ROUTINE"),
    ("Alter_routine_priv", "ALTER ROUTINE"),
    ("Execute_priv", "EXECUTE"),
    ("Event_priv", "EVENT"),
    ("Trigger_priv", "TRIGGER"),
];

/// A `tables_priv.Table_priv` or `procs_priv.Proc_priv` element as a privilege;
/// `None` for `Grant` (the grant option).
fn set_element(e: &str) -> Option<String> {
    match e.to_ascii_lowercase().as_str() {
        "grant" | "" => None,
        "delete versioning rows" => Some("DELETE HISTORY".into()),
        other => Some(other.to_ascii_uppercase()),
    }
}

/// Reads a `GRANT … ON *.* TO …` line of `SHOW GRANTS`: the privilege list
/// (`None` when it is only `USAGE`) and whether it ends `WITH GRANT OPTION`.
/// `None` for any other line (database, table, routine grants; role grants).
fn parse_global_grant(line: &str) -> Option<(Option<String>, bool)> {
    let rest = line.strip_prefix("GRANT ")?;
    let (privs, after) = rest.split_once(" ON *.* TO ")?;
    let option = after.trim_end().ends_with("WITH GRANT OPTION");
    let privs = (privs != "USAGE").then(|| privs.to_owned());
    Some((privs, option))
}

/// The `IDENTIFIED …` clause for a new password: a hash, never the plaintext.
/// MySQL 8 keeps the current password as the secondary one with `retain`.
fn identified(mariadb: bool, password: &Secret, retain: bool) -> String {
    if mariadb {
        // The hash is `*` and hex digits: nothing to escape.
        format!(
            "IDENTIFIED BY PASSWORD '{}'",
            password::native_password(password)
        )
    } else {
        let mut s = format!(
            "IDENTIFIED WITH caching_sha2_password AS {}",
            password::hex(&password::caching_sha2_password(password))
        );
        if retain {
            s.push_str(" RETAIN CURRENT PASSWORD");
        }
        s
    }
}

/// `PASSWORD EXPIRE INTERVAL n DAY` covering `until` from now: the server's
/// backstop when credrotd cannot revoke on time (whole days, at least one).
fn expire_interval(now: DateTime<Utc>, until: DateTime<Utc>) -> String {
    let secs = (until - now).num_seconds().max(1);
    let days = (secs + 86_399) / 86_400;
    format!("PASSWORD EXPIRE INTERVAL {} DAY", days.clamp(1, 65_535))
}

/// A name for a server-side lock or event derived from `parts`: both are limited
/// to 64 characters, names and ledger ids are not.
fn short_name(prefix: &str, parts: &[&str]) -> String {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let mut out = String::from(prefix);
    for b in &digest[..12] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The event that locks `username` at its expiry.
fn expiry_event(username: &str) -> String {
    short_name("expire_", &[username])
}

pub struct Mysql {
    name: String,
    kind: EngineKind,
    pool: MySqlPool,
    /// Where verify logins go: the admin connection's host, port, TLS and socket.
    base: MySqlConnectOptions,
    /// The same without a default database: a MariaDB login without its
    /// default role yet may not enter the database.
    base_nodb: MySqlConnectOptions,
    presence_opts: MySqlConnectOptions,
    presence: tokio::sync::Mutex<Option<MySqlConnection>>,
    hosts: Vec<String>,
    endpoint: Endpoint,
    server: tokio::sync::OnceCell<Server>,
    marker_ready: tokio::sync::OnceCell<()>,
}

/// `mysql://u@h:p/db?opts` without `/db`, options kept.
fn without_database(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("mysql", url));
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let authority = main.split('/').next().unwrap_or(main);
    match query {
        Some(q) => format!("{scheme}://{authority}?{q}"),
        None => format!("{scheme}://{authority}"),
    }
}

/// The session's active role(s), as the server names them.
async fn current_role(conn: &mut MySqlConnection) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT CAST(CURRENT_ROLE() AS CHAR)")
        .fetch_one(conn)
        .await
}

/// Pins `sql_mode` (the quoting in [`sql`] relies on it) and UTC on a session.
async fn pin_session(conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
    conn.execute(
        format!(
            "SET SESSION sql_mode = '{}', SESSION time_zone = '+00:00'",
            sql::SQL_MODE
        )
        .as_str(),
    )
    .await?;
    Ok(())
}

impl Mysql {
    pub fn new(db: &Database) -> Result<Self, EngineError> {
        // sqlx reads `mysql://`; `mariadb://` is the same protocol.
        let url = match db.url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => db.url.clone(),
        };
        let parse = |url: &str| {
            MySqlConnectOptions::from_str(url).map_err(|source| EngineError::Url {
                database: db.name.clone(),
                source,
            })
        };
        let mut opts = parse(&url)?;
        let base_nodb = parse(&without_database(&url))?
            .disable_statement_logging()
            .pipes_as_concat(false);
        if let Some(pw) = db.password.read().map_err(|source| EngineError::Password {
            database: db.name.clone(),
            source,
        })? {
            opts = opts.password(pw.expose());
        }
        // Statements carry password hashes: never log them, slow ones included.
        opts = opts
            .disable_statement_logging()
            .pipes_as_concat(false)
            .timezone(Some("+00:00".into()));
        let endpoint = Endpoint {
            engine: db.engine.as_str(),
            host: db
                .publish_host
                .clone()
                .unwrap_or_else(|| opts.get_host().to_owned()),
            port: db.publish_port.unwrap_or_else(|| opts.get_port()),
            dbname: db
                .publish_dbname
                .clone()
                .or_else(|| opts.get_database().map(str::to_owned))
                .unwrap_or_default(),
        };
        let pool = MySqlPoolOptions::new()
            .max_connections(db.max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|conn, _| Box::pin(async move { pin_session(conn).await }))
            .connect_lazy_with(opts.clone());
        Ok(Mysql {
            name: db.name.clone(),
            kind: db.engine,
            pool,
            base: opts.clone(),
            base_nodb,
            presence_opts: opts,
            presence: tokio::sync::Mutex::new(None),
            hosts: db.hosts.clone(),
            endpoint,
            server: tokio::sync::OnceCell::new(),
            marker_ready: tokio::sync::OnceCell::new(),
        })
    }

    fn sql(&self, action: impl Into<String>) -> impl FnOnce(sqlx::Error) -> EngineError + '_ {
        let action = action.into();
        move |source| EngineError::Sql {
            database: self.name.clone(),
            action,
            source,
        }
    }

    fn quote<T>(&self, r: Result<T, sql::QuoteError>) -> Result<T, EngineError> {
        r.map_err(|e| EngineError::Invalid {
            database: self.name.clone(),
            what: e.to_string(),
        })
    }

    /// A pooled admin connection, once the server is known: detecting it needs
    /// a connection of its own, which must not wait behind the one a caller
    /// already holds (with every pooled connection held, it never would).
    async fn conn(&self) -> Result<PoolConnection<MySql>, EngineError> {
        self.server().await?;
        self.acquire().await
    }

    async fn acquire(&self) -> Result<PoolConnection<MySql>, EngineError> {
        self.pool
            .acquire()
            .await
            .map_err(self.sql("connect as the admin"))
    }

    /// Runs one statement as text (MariaDB refuses some account DDL prepared).
    async fn exec(
        &self,
        c: &mut MySqlConnection,
        stmt: &str,
        action: &str,
    ) -> Result<(), EngineError> {
        c.execute(stmt).await.map_err(self.sql(action))?;
        Ok(())
    }

    async fn server(&self) -> Result<&Server, EngineError> {
        self.server
            .get_or_try_init(|| async {
                let mut c = self.acquire().await?;
                let (version, events): (String, String) =
                    sqlx::query_as("SELECT VERSION(), CAST(@@event_scheduler AS CHAR)")
                        .fetch_one(&mut *c)
                        .await
                        .map_err(self.sql("read the server version"))?;
                let mariadb = version.contains("MariaDB");
                if self.kind == EngineKind::Mariadb && !mariadb {
                    return Err(EngineError::Invalid {
                        database: self.name.clone(),
                        what: format!("engine is mariadb but the server is MySQL {version}; write engine: mysql (names are then limited to 32 characters)"),
                    });
                }
                Ok(Server {
                    mariadb,
                    version,
                    events: events.eq_ignore_ascii_case("ON"),
                })
            })
            .await
    }

    /// Creates `credrotd.managed` once per process.
    async fn marker_table(&self, c: &mut MySqlConnection) -> Result<(), EngineError> {
        if self.marker_ready.initialized() {
            return Ok(());
        }
        let action = "create the marker table credrotd.managed";
        self.exec(
            c,
            &format!("CREATE DATABASE IF NOT EXISTS {MARKER_DB}"),
            action,
        )
        .await?;
        self.exec(
            c,
            &format!(
                "CREATE TABLE IF NOT EXISTS {MARKER_DB}.managed (
                   name VARCHAR(80) NOT NULL PRIMARY KEY,
                   kind VARCHAR(16) NOT NULL,
                   account VARCHAR(80) NOT NULL,
                   owner VARCHAR(64) NULL,
                   seen DATETIME NULL,
                   valid_until DATETIME NULL,
                   KEY by_account (account, kind)
                 ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            ),
            action,
        )
        .await?;
        let _ = self.marker_ready.set(());
        Ok(())
    }

    async fn marker(
        &self,
        c: &mut MySqlConnection,
        name: &str,
    ) -> Result<Option<Marker>, EngineError> {
        let row: Option<MarkerRow> =
            sqlx::query_as(
                "SELECT CAST(kind AS CHAR), CAST(account AS CHAR), CAST(owner AS CHAR), seen, valid_until
                 FROM credrotd.managed WHERE name = ?",
            )
            .bind(name)
            .fetch_optional(&mut *c)
            .await
            .map_err(self.sql(format!("read the marker of {name}")))?;
        Ok(row.map(|(kind, account, owner, seen, until)| Marker {
            kind,
            account,
            owner,
            seen: seen.map(|t| t.and_utc()),
            valid_until: until.map(|t| t.and_utc()),
        }))
    }

    async fn set_marker(
        &self,
        c: &mut MySqlConnection,
        name: &str,
        kind: &str,
        account: &str,
        valid_until: Option<DateTime<Utc>>,
    ) -> Result<(), EngineError> {
        sqlx::query(
            "INSERT INTO credrotd.managed (name, kind, account, valid_until) VALUES (?, ?, ?, ?)
             ON DUPLICATE KEY UPDATE kind = VALUES(kind), account = VALUES(account),
               valid_until = COALESCE(VALUES(valid_until), valid_until)",
        )
        .bind(name)
        .bind(kind)
        .bind(account)
        .bind(valid_until.map(|t| t.naive_utc()))
        .execute(&mut *c)
        .await
        .map_err(self.sql(format!("mark {name} as managed")))?;
        Ok(())
    }

    async fn set_valid_until(
        &self,
        c: &mut MySqlConnection,
        name: &str,
        until: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        sqlx::query("UPDATE credrotd.managed SET valid_until = ? WHERE name = ?")
            .bind(until.naive_utc())
            .bind(name)
            .execute(&mut *c)
            .await
            .map_err(self.sql(format!("record the expiry of {name}")))?;
        Ok(())
    }

    /// Every host variant of `name` (users and roles).
    async fn users(
        &self,
        c: &mut MySqlConnection,
        name: &str,
    ) -> Result<Vec<UserRow>, EngineError> {
        let server = self.server().await?.clone();
        let q = if server.mariadb {
            "SELECT CAST(Host AS CHAR),
                    CAST(COALESCE(JSON_VALUE(Priv, '$.is_role') IN ('1', 'true'), 0) AS SIGNED),
                    CAST(COALESCE(JSON_VALUE(Priv, '$.account_locked') IN ('1', 'true'), 0) AS SIGNED),
                    CAST(JSON_VALUE(Priv, '$.password_last_changed') AS SIGNED),
                    CAST(COALESCE(JSON_VALUE(Priv, '$.plugin'), '') AS CHAR),
                    CAST(COALESCE(JSON_VALUE(Priv, '$.authentication_string'), '') AS CHAR)
             FROM mysql.global_priv WHERE User = ? ORDER BY Host"
        } else {
            "SELECT CAST(Host AS CHAR), CAST(0 AS SIGNED), CAST(account_locked = 'Y' AS SIGNED),
                    CAST(UNIX_TIMESTAMP(password_last_changed) AS SIGNED),
                    CAST(plugin AS CHAR), CAST(authentication_string AS CHAR)
             FROM mysql.user WHERE User = ? ORDER BY Host"
        };
        let rows: Vec<(String, i64, i64, Option<i64>, String, String)> = sqlx::query_as(q)
            .bind(name)
            .fetch_all(&mut *c)
            .await
            .map_err(self.sql(format!("read the accounts named {name}")))?;
        Ok(rows
            .into_iter()
            .map(|(host, role, locked, last, plugin, auth)| UserRow {
                is_role: role != 0 || (!server.mariadb && host == "%" && plugin.is_empty()),
                host,
                locked: locked != 0,
                last_changed: last,
                plugin,
                auth,
            })
            .collect())
    }

    /// The quoted accounts of every existing host variant of a login.
    async fn variants(
        &self,
        c: &mut MySqlConnection,
        username: &str,
    ) -> Result<Vec<(UserRow, String)>, EngineError> {
        let mut out = Vec::new();
        for u in self.users(c, username).await? {
            if u.is_role {
                continue;
            }
            let q = self.quote(sql::user(username, &u.host))?;
            out.push((u, q));
        }
        Ok(out)
    }

    /// Takes a named server lock on `c`, so that two daemons (or a daemon and
    /// the CLI) never reconcile the same role at once. Release it with
    /// [`Mysql::unlock`] on the same connection.
    async fn lock(&self, c: &mut MySqlConnection, name: &str) -> Result<(), EngineError> {
        let got: Option<i64> = sqlx::query_scalar("SELECT CAST(GET_LOCK(?, 60) AS SIGNED)")
            .bind(name)
            .fetch_one(&mut *c)
            .await
            .map_err(self.sql("take the reconcile lock"))?;
        if got != Some(1) {
            return Err(EngineError::Invalid {
                database: self.name.clone(),
                what: "another process held the reconcile lock for 60 s".into(),
            });
        }
        Ok(())
    }

    async fn unlock(&self, c: &mut MySqlConnection, name: &str) {
        let _ = sqlx::query("SELECT RELEASE_LOCK(?)")
            .bind(name)
            .execute(&mut *c)
            .await;
    }

    /// The grants the account declares, by target. Named objects that do not
    /// exist are reported as stuck and left out.
    async fn desired(
        &self,
        c: &mut MySqlConnection,
        account: &Account,
        stuck: &mut Vec<Stuck>,
    ) -> Result<BTreeMap<Target, BTreeSet<String>>, EngineError> {
        let mut out: BTreeMap<Target, BTreeSet<String>> = BTreeMap::new();
        for g in &account.grants {
            let privs = g.privileges.iter().map(|p| (*p).to_owned());
            let named = match (&g.objects, g.kind) {
                (None, _) | (Some(Objects::All), _) | (_, ObjectKind::Schema) => {
                    out.entry(Target::Db(db_pattern(&g.schema)))
                        .or_default()
                        .extend(privs);
                    continue;
                }
                (Some(Objects::Named(names)), _) => names,
            };
            for n in named {
                let (target, exists_q, what) = match g.kind {
                    ObjectKind::Table => (
                        Target::Table(g.schema.clone(), n.clone()),
                        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                        "table",
                    ),
                    ObjectKind::Function | ObjectKind::Procedure => {
                        let k = if g.kind == ObjectKind::Function { "FUNCTION" } else { "PROCEDURE" };
                        (
                            Target::Routine(k, g.schema.clone(), n.clone()),
                            if k == "FUNCTION" {
                                "SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ? AND ROUTINE_NAME = ? AND ROUTINE_TYPE = 'FUNCTION'"
                            } else {
                                "SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ? AND ROUTINE_NAME = ? AND ROUTINE_TYPE = 'PROCEDURE'"
                            },
                            if k == "FUNCTION" { "function" } else { "procedure" },
                        )
                    }
                    ObjectKind::Schema | ObjectKind::Sequence => continue,
                };
                let n_found: i64 = sqlx::query_scalar(exists_q)
                    .bind(&g.schema)
                    .bind(n)
                    .fetch_one(&mut *c)
                    .await
                    .map_err(self.sql(format!("look up {what} {}.{n}", g.schema)))?;
                if n_found == 0 {
                    stuck.push(Stuck {
                        what: format!("{what} {}.{n}", g.schema),
                        error: "does not exist (or the admin cannot see it)".into(),
                    });
                    continue;
                }
                out.entry(target)
                    .or_default()
                    .extend(g.privileges.iter().map(|p| (*p).to_owned()));
            }
        }
        Ok(out)
    }

    /// What the role holds now, from the grant tables.
    async fn held(
        &self,
        c: &mut MySqlConnection,
        role: &str,
    ) -> Result<BTreeMap<Target, Held>, EngineError> {
        let server = self.server().await?.clone();
        let host = server.role_host();
        let mut out: BTreeMap<Target, Held> = BTreeMap::new();
        let mut cols: Vec<&str> = DB_COLUMNS.iter().map(|(c, _)| *c).collect();
        if server.mariadb {
            cols.push("Delete_history_priv");
        }
        cols.push("Grant_priv");
        let q = format!(
            "SELECT CAST(Db AS CHAR), CAST(CONCAT({}) AS CHAR) FROM mysql.db WHERE User = ? AND Host = ?",
            cols.join(", ")
        );
        let rows: Vec<(String, String)> = sqlx::query_as(&q)
            .bind(role)
            .bind(host)
            .fetch_all(&mut *c)
            .await
            .map_err(self.sql(format!("read the database grants of {role}")))?;
        for (db, flags) in rows {
            let flags = flags.as_bytes();
            let mut h = Held::default();
            for (i, (_, p)) in DB_COLUMNS.iter().enumerate() {
                if flags.get(i) == Some(&b'Y') {
                    h.privileges.insert((*p).to_owned());
                }
            }
            if server.mariadb && flags.get(DB_COLUMNS.len()) == Some(&b'Y') {
                h.privileges.insert("DELETE HISTORY".into());
            }
            h.grant_option = flags.last() == Some(&b'Y');
            out.insert(Target::Db(db), h);
        }
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT CAST(Db AS CHAR), CAST(Table_name AS CHAR), CAST(Table_priv AS CHAR) FROM mysql.tables_priv WHERE User = ? AND Host = ?",
        )
        .bind(role)
        .bind(host)
        .fetch_all(&mut *c)
        .await
        .map_err(self.sql(format!("read the table grants of {role}")))?;
        for (db, table, privs) in rows {
            let h = out.entry(Target::Table(db, table)).or_default();
            for e in privs.split(',') {
                match set_element(e) {
                    Some(p) => {
                        h.privileges.insert(p);
                    }
                    None => h.grant_option |= e.eq_ignore_ascii_case("grant"),
                }
            }
        }
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT CAST(Db AS CHAR), CAST(Routine_name AS CHAR), CAST(Routine_type AS CHAR), CAST(Proc_priv AS CHAR)
             FROM mysql.procs_priv WHERE User = ? AND Host = ?",
        )
        .bind(role)
        .bind(host)
        .fetch_all(&mut *c)
        .await
        .map_err(self.sql(format!("read the routine grants of {role}")))?;
        for (db, name, kind, privs) in rows {
            let k = if kind.eq_ignore_ascii_case("PROCEDURE") {
                "PROCEDURE"
            } else {
                "FUNCTION"
            };
            let h = out.entry(Target::Routine(k, db, name)).or_default();
            for e in privs.split(',') {
                match set_element(e) {
                    Some(p) => {
                        h.privileges.insert(p);
                    }
                    None => h.grant_option |= e.eq_ignore_ascii_case("grant"),
                }
            }
        }
        out.retain(|_, h| !h.privileges.is_empty() || h.grant_option);
        Ok(out)
    }

    /// The global privileges of a role as `SHOW GRANTS` lists them (`None` for
    /// `USAGE`, i.e. none), and whether it holds the global grant option.
    async fn global_grants(
        &self,
        c: &mut MySqlConnection,
        qrole: &str,
    ) -> Result<(Option<String>, bool), EngineError> {
        let rows = c
            .fetch_all(format!("SHOW GRANTS FOR {qrole}").as_str())
            .await
            .map_err(self.sql(format!("read the grants of {qrole}")))?;
        for row in rows {
            let line: String = sqlx::Row::try_get::<String, _>(&row, 0)
                .or_else(|_| {
                    sqlx::Row::try_get::<Vec<u8>, _>(&row, 0)
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                })
                .map_err(self.sql(format!("read the grants of {qrole}")))?;
            if let Some(parsed) = parse_global_grant(&line) {
                return Ok(parsed);
            }
        }
        Ok((None, false))
    }

    /// Roles granted to `grantee`@`host`.
    async fn roles_of(
        &self,
        c: &mut MySqlConnection,
        grantee: &str,
        host: &str,
    ) -> Result<BTreeSet<String>, EngineError> {
        let mariadb = self.server().await?.mariadb;
        let q = if mariadb {
            "SELECT CAST(Role AS CHAR) FROM mysql.roles_mapping WHERE User = ? AND Host = ?"
        } else {
            "SELECT CAST(FROM_USER AS CHAR) FROM mysql.role_edges WHERE TO_USER = ? AND TO_HOST = ?"
        };
        let rows: Vec<String> = sqlx::query_scalar(q)
            .bind(grantee)
            .bind(host)
            .fetch_all(&mut *c)
            .await
            .map_err(self.sql(format!("read the roles of {grantee}")))?;
        Ok(rows.into_iter().collect())
    }

    /// Applies `stmt` (or, in a plan, records it). A statement the server
    /// refuses becomes a stuck item: the rest still applies.
    async fn change(
        &self,
        c: &mut MySqlConnection,
        stmt: String,
        apply: bool,
        out: &mut Reconciled,
    ) {
        if apply {
            if let Err(e) = c.execute(stmt.as_str()).await {
                let error = match &e {
                    sqlx::Error::Database(d) => d.message().to_owned(),
                    other => other.to_string(),
                };
                out.stuck.push(Stuck { what: stmt, error });
                return;
            }
        }
        out.changes.push(Change(stmt));
    }

    async fn reconcile_locked(
        &self,
        c: &mut MySqlConnection,
        account: &Account,
        apply: bool,
    ) -> Result<Reconciled, EngineError> {
        let server = self.server().await?.clone();
        let role = account.scoped_role();
        let qrole = self.quote(sql::role(role))?;
        let mut out = Reconciled::default();
        if let Strategy::Static { .. } = account.strategy {
            if !account.overlap.is_zero() && server.mariadb {
                return Err(EngineError::Invalid {
                    database: self.name.clone(),
                    what: format!("account {}: a static account cannot overlap on {} (one password per user): set overlap: 0, or write engine: mariadb to have it checked", account.name, server.name()),
                });
            }
        }
        let existing = self.users(c, role).await?;
        let marker = self.marker(c, role).await?;
        let managed = marker
            .as_ref()
            .is_some_and(|m| m.kind == "scoped" && m.account == account.name);
        if !existing.is_empty() && !managed {
            return Err(EngineError::NotManaged {
                database: self.name.clone(),
                role: role.to_owned(),
            });
        }
        if existing.is_empty() {
            if apply {
                self.set_marker(c, role, "scoped", &account.name, None)
                    .await?;
                self.exec(
                    c,
                    &format!("CREATE ROLE IF NOT EXISTS {qrole}"),
                    &format!("create role {role}"),
                )
                .await?;
            }
            out.changes.push(Change(format!("CREATE ROLE {qrole}")));
        } else if existing.iter().any(|u| !u.is_role) {
            // A user, not a role, carries the name: never hand it privileges.
            return Err(EngineError::NotManaged {
                database: self.name.clone(),
                role: role.to_owned(),
            });
        }

        // Object privileges.
        let desired = self.desired(c, account, &mut out.stuck).await?;
        let held = if existing.is_empty() {
            BTreeMap::new()
        } else {
            self.held(c, role).await?
        };
        let targets: BTreeSet<&Target> = desired.keys().chain(held.keys()).collect();
        for t in targets {
            let want = desired.get(t).cloned().unwrap_or_default();
            let have = held.get(t).cloned().unwrap_or_default();
            let on = self.quote(t.sql())?;
            if have.grant_option {
                self.change(
                    c,
                    format!("REVOKE GRANT OPTION ON {on} FROM {qrole}"),
                    apply,
                    &mut out,
                )
                .await;
            }
            let extra: Vec<&str> = have
                .privileges
                .difference(&want)
                .map(String::as_str)
                .collect();
            if !extra.is_empty() {
                self.change(
                    c,
                    format!("REVOKE {} ON {on} FROM {qrole}", extra.join(", ")),
                    apply,
                    &mut out,
                )
                .await;
            }
            let missing: Vec<&str> = want
                .difference(&have.privileges)
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                self.change(
                    c,
                    format!("GRANT {} ON {on} TO {qrole}", missing.join(", ")),
                    apply,
                    &mut out,
                )
                .await;
            }
        }

        // Global privileges: a scoped role holds none.
        if !existing.is_empty() {
            let (privs, option) = self.global_grants(c, &qrole).await?;
            if option {
                self.change(
                    c,
                    format!("REVOKE GRANT OPTION ON *.* FROM {qrole}"),
                    apply,
                    &mut out,
                )
                .await;
            }
            if let Some(privs) = privs {
                self.change(
                    c,
                    format!("REVOKE {privs} ON *.* FROM {qrole}"),
                    apply,
                    &mut out,
                )
                .await;
            }
        }

        // Memberships: exactly `member_of`.
        let have_roles = if existing.is_empty() {
            BTreeSet::new()
        } else {
            self.roles_of(c, role, server.role_host()).await?
        };
        let want_roles: BTreeSet<String> = account.member_of.iter().cloned().collect();
        for r in want_roles.difference(&have_roles) {
            if !self.users(c, r).await?.iter().any(|u| u.is_role) {
                return Err(EngineError::Missing {
                    database: self.name.clone(),
                    what: format!("role {r} (member_of of account {})", account.name),
                });
            }
            let q = self.quote(sql::role(r))?;
            self.change(c, format!("GRANT {q} TO {qrole}"), apply, &mut out)
                .await;
        }
        for r in have_roles.difference(&want_roles) {
            let q = self.quote(sql::role(r))?;
            self.change(c, format!("REVOKE {q} FROM {qrole}"), apply, &mut out)
                .await;
        }

        // A static account's user gets the scoped role as its default role.
        if let Strategy::Static { role: user, .. } = &account.strategy {
            let variants = self.variants(c, user).await?;
            if variants.is_empty() {
                return Err(EngineError::Missing {
                    database: self.name.clone(),
                    what: format!("user {user} (role of static account {})", account.name),
                });
            }
            for (u, q) in &variants {
                if !self.roles_of(c, user, &u.host).await?.contains(role) {
                    let stmt = format!("GRANT {qrole} TO {q}");
                    if apply {
                        self.exec(c, &stmt, &format!("grant {role} to {user}"))
                            .await?;
                    }
                    out.changes.push(Change(stmt));
                }
                if !server.mariadb && apply {
                    self.exec(
                        c,
                        &format!("SET DEFAULT ROLE {qrole} TO {q}"),
                        &format!("set the default role of {user}"),
                    )
                    .await?;
                }
            }
            if apply {
                self.set_marker(c, user, "static", &account.name, None)
                    .await?;
            }
        }
        Ok(out)
    }

    /// Grants the scoped role to a login and, on MySQL 8, makes it the default
    /// role. (MariaDB lets only the user itself, or a user who may update the
    /// `mysql` schema, set a default role: the login sets it at verify.)
    async fn grant_scoped(
        &self,
        c: &mut MySqlConnection,
        account: &Account,
        quser: &str,
    ) -> Result<(), EngineError> {
        let server = self.server().await?.clone();
        let qrole = self.quote(sql::role(account.scoped_role()))?;
        let action = format!("grant role {} to a login", account.scoped_role());
        self.exec(c, &format!("GRANT {qrole} TO {quser}"), &action)
            .await?;
        if !server.mariadb {
            self.exec(c, &format!("SET DEFAULT ROLE {qrole} TO {quser}"), &action)
                .await?;
        }
        Ok(())
    }

    /// Creates or moves the event that locks `username` at `until`, where the
    /// event scheduler runs. Best effort: the backstop is the password lifetime.
    async fn schedule_lock(
        &self,
        c: &mut MySqlConnection,
        username: &str,
        until: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        if !self.server().await?.events {
            return Ok(());
        }
        let variants = self.variants(c, username).await?;
        if variants.is_empty() {
            return Ok(());
        }
        let accounts: Vec<&str> = variants.iter().map(|(_, q)| q.as_str()).collect();
        let event = expiry_event(username);
        let action = format!("schedule the expiry of {username}");
        self.exec(
            c,
            &format!("DROP EVENT IF EXISTS {MARKER_DB}.{event}"),
            &action,
        )
        .await?;
        self.exec(
            c,
            &format!(
                "CREATE EVENT {MARKER_DB}.{event} ON SCHEDULE AT '{}' ON COMPLETION NOT PRESERVE DO ALTER USER IF EXISTS {} PASSWORD EXPIRE ACCOUNT LOCK",
                until.format("%Y-%m-%d %H:%M:%S"),
                accounts.join(", ")
            ),
            &action,
        )
        .await
    }

    async fn drop_event(&self, c: &mut MySqlConnection, username: &str) -> Result<(), EngineError> {
        if !self.server().await?.events {
            return Ok(());
        }
        let event = expiry_event(username);
        self.exec(
            c,
            &format!("DROP EVENT IF EXISTS {MARKER_DB}.{event}"),
            &format!("drop the expiry event of {username}"),
        )
        .await
    }

    async fn server_now(&self, c: &mut MySqlConnection) -> Result<DateTime<Utc>, EngineError> {
        let now: NaiveDateTime = sqlx::query_scalar("SELECT UTC_TIMESTAMP()")
            .fetch_one(&mut *c)
            .await
            .map_err(self.sql("read the server time"))?;
        Ok(now.and_utc())
    }

    /// Objects `username` is the DEFINER of, in any database the admin sees.
    async fn definer_of(
        &self,
        c: &mut MySqlConnection,
        username: &str,
    ) -> Result<Vec<String>, EngineError> {
        // `user@host` with any host; `LIKE` has no escape under the pinned mode,
        // so name one.
        let mut pattern = String::new();
        for ch in username.chars() {
            if matches!(ch, '%' | '_' | '!') {
                pattern.push('!');
            }
            pattern.push(ch);
        }
        pattern.push_str("@%");
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT 'view', TABLE_SCHEMA, TABLE_NAME FROM information_schema.VIEWS WHERE DEFINER LIKE ? ESCAPE '!'
             UNION ALL SELECT LOWER(ROUTINE_TYPE), ROUTINE_SCHEMA, ROUTINE_NAME FROM information_schema.ROUTINES WHERE DEFINER LIKE ? ESCAPE '!'
             UNION ALL SELECT 'trigger', TRIGGER_SCHEMA, TRIGGER_NAME FROM information_schema.TRIGGERS WHERE DEFINER LIKE ? ESCAPE '!'
             UNION ALL SELECT 'event', EVENT_SCHEMA, EVENT_NAME FROM information_schema.EVENTS WHERE DEFINER LIKE ? ESCAPE '!'",
        )
        .bind(&pattern)
        .bind(&pattern)
        .bind(&pattern)
        .bind(&pattern)
        .fetch_all(&mut *c)
        .await
        .map_err(self.sql(format!("look for objects {username} is the DEFINER of")))?;
        Ok(rows
            .into_iter()
            .map(|(k, s, n)| format!("{k} {s}.{n}"))
            .collect())
    }

    async fn lock_variants(
        &self,
        c: &mut MySqlConnection,
        username: &str,
    ) -> Result<(), EngineError> {
        let variants = self.variants(c, username).await?;
        let action = format!("disable login {username}");
        for (u, q) in &variants {
            if !u.locked {
                self.exec(
                    c,
                    &format!("ALTER USER {q} PASSWORD EXPIRE ACCOUNT LOCK"),
                    &action,
                )
                .await?;
            }
        }
        if !variants.is_empty() {
            let now = self.server_now(c).await?;
            if let Some(m) = self.marker(c, username).await? {
                if m.valid_until.is_none_or(|v| v > now) {
                    self.set_valid_until(c, username, now).await?;
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Engine for Mysql {
    async fn reconcile(&self, account: &Account, apply: bool) -> Result<Reconciled, EngineError> {
        let mut c = self.conn().await?;
        self.marker_table(&mut c).await?;
        let lock = short_name("credrotd-", &[&self.name, "reconcile", &account.name]);
        self.lock(&mut c, &lock).await?;
        let out = self.reconcile_locked(&mut c, account, apply).await;
        self.unlock(&mut c, &lock).await;
        out
    }

    async fn create_login(&self, account: &Account, login: &Login<'_>) -> Result<(), EngineError> {
        let server = self.server().await?.clone();
        let mut c = self.conn().await?;
        self.marker_table(&mut c).await?;
        let user = login.username;
        let action = format!("create login {user}");
        // The marker first: a crash after CREATE USER leaves a login that
        // recovery finds (managed_logins) and drops.
        self.set_marker(
            &mut c,
            user,
            "login",
            &account.name,
            Some(login.valid_until),
        )
        .await?;
        let now = self.server_now(&mut c).await?;
        let existing: BTreeSet<String> = self
            .variants(&mut c, user)
            .await?
            .into_iter()
            .map(|(u, _)| u.host)
            .collect();
        let limit = match account.connection_limit {
            Some(n) if n > 0 => format!(" WITH MAX_USER_CONNECTIONS {n}"),
            _ => String::new(),
        };
        for host in &self.hosts {
            let q = self.quote(sql::user(user, host))?;
            let verb = if existing.contains(host) {
                "ALTER"
            } else {
                "CREATE"
            };
            let stmt = format!(
                "{verb} USER {q} {}{limit} {} ACCOUNT UNLOCK",
                identified(server.mariadb, login.password, false),
                expire_interval(now, login.valid_until)
            );
            self.exec(&mut c, &stmt, &action).await?;
            self.grant_scoped(&mut c, account, &q).await?;
        }
        self.schedule_lock(&mut c, user, login.valid_until).await
    }

    async fn ensure_fixed_login(
        &self,
        account: &Account,
        username: &str,
    ) -> Result<(), EngineError> {
        let mut c = self.conn().await?;
        self.marker_table(&mut c).await?;
        self.set_marker(&mut c, username, "alternating", &account.name, None)
            .await?;
        let existing: BTreeSet<String> = self
            .variants(&mut c, username)
            .await?
            .into_iter()
            .map(|(u, _)| u.host)
            .collect();
        for host in &self.hosts {
            let q = self.quote(sql::user(username, host))?;
            if !existing.contains(host) {
                // No password anyone knows, expired and locked until set_password.
                let stmt = format!(
                    "CREATE USER {q} {} PASSWORD EXPIRE ACCOUNT LOCK",
                    identified(self.server().await?.mariadb, &Secret::generate(), false)
                );
                self.exec(&mut c, &stmt, &format!("create login {username}"))
                    .await?;
            }
            self.grant_scoped(&mut c, account, &q).await?;
        }
        Ok(())
    }

    async fn set_password(&self, account: &Account, login: &Login<'_>) -> Result<(), EngineError> {
        let server = self.server().await?.clone();
        let mut c = self.conn().await?;
        self.marker_table(&mut c).await?;
        let user = login.username;
        let is_static = matches!(account.strategy, Strategy::Static { .. });
        let retain = is_static && !account.overlap.is_zero();
        if retain && server.mariadb {
            return Err(EngineError::Invalid {
                database: self.name.clone(),
                what: format!("account {}: a static account cannot overlap on {} (one password per user): set overlap: 0", account.name, server.name()),
            });
        }
        let variants = self.variants(&mut c, user).await?;
        if variants.is_empty() {
            return Err(EngineError::Missing {
                database: self.name.clone(),
                what: format!("user {user}"),
            });
        }
        let kind = if is_static { "static" } else { "alternating" };
        self.set_marker(&mut c, user, kind, &account.name, Some(login.valid_until))
            .await?;
        self.set_valid_until(&mut c, user, login.valid_until)
            .await?;
        let now = self.server_now(&mut c).await?;
        let action = format!("set the password of {user}");
        for (_, q) in &variants {
            let stmt = format!(
                "ALTER USER {q} {} {} ACCOUNT UNLOCK",
                identified(server.mariadb, login.password, retain),
                expire_interval(now, login.valid_until)
            );
            self.exec(&mut c, &stmt, &action).await?;
        }
        self.schedule_lock(&mut c, user, login.valid_until).await
    }

    async fn verify(&self, username: &str, password: &Secret) -> Result<(), EngineError> {
        let err = |source| EngineError::Verify {
            database: self.name.clone(),
            username: username.to_owned(),
            source,
        };
        // Which role the login must run with: its account's scoped role.
        let role = {
            let mut c = self.conn().await?;
            self.marker_table(&mut c).await?;
            self.marker(&mut c, username).await?.map(|m| m.account)
        };
        let mariadb = self.server().await?.mariadb;
        let connect = |opts: &MySqlConnectOptions| {
            let opts = opts.clone().username(username).password(password.expose());
            async move {
                let mut conn = tokio::time::timeout(Duration::from_secs(15), opts.connect())
                    .await
                    .map_err(|_| err(sqlx::Error::PoolTimedOut))?
                    .map_err(err)?;
                pin_session(&mut conn).await.map_err(err)?;
                Ok::<_, EngineError>(conn)
            }
        };
        if let (Some(role), true) = (&role, mariadb) {
            // Only the login itself may set its default role without UPDATE on
            // `mysql.*`: it does so once, outside the database it cannot enter
            // before; the login as consumers make it is checked below.
            let mut conn = connect(&self.base_nodb).await?;
            if current_role(&mut conn).await.map_err(err)?.as_deref() != Some(role.as_str()) {
                let q = self.quote(sql::role(role))?;
                conn.execute(format!("SET DEFAULT ROLE {q}").as_str())
                    .await
                    .map_err(err)?;
            }
            let _ = conn.close().await;
        }
        let mut conn = connect(&self.base).await?;
        let current = current_role(&mut conn).await.map_err(err)?;
        let one: i64 = sqlx::query_scalar("SELECT CAST(1 AS SIGNED)")
            .fetch_one(&mut conn)
            .await
            .map_err(err)?;
        let _ = conn.close().await;
        let Some(role) = role else {
            return Ok(());
        };
        // MariaDB names the role; MySQL 8 lists active roles as `` `r`@`%` ``.
        let active = current
            .as_deref()
            .is_some_and(|c| c == role || c.split(',').any(|r| r == format!("`{role}`@`%`")));
        if one == 1 && active {
            Ok(())
        } else {
            Err(EngineError::Invalid {
                database: self.name.clone(),
                what: format!("login {username} does not run with its role {role} at login"),
            })
        }
    }

    async fn disable_login(&self, username: &str) -> Result<(), EngineError> {
        let mut c = self.conn().await?;
        self.marker_table(&mut c).await?;
        self.lock_variants(&mut c, username).await
    }

    async fn terminate_sessions(&self, username: &str) -> Result<u64, EngineError> {
        let mut c = self.conn().await?;
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST WHERE USER = ? AND ID <> CONNECTION_ID()",
        )
        .bind(username)
        .fetch_all(&mut *c)
        .await
        .map_err(self.sql(format!("list the sessions of {username}")))?;
        let mut n = 0;
        for id in ids {
            match c.execute(format!("KILL CONNECTION {id}").as_str()).await {
                Ok(_) => n += 1,
                // ER_NO_SUCH_THREAD: it ended on its own meanwhile.
                Err(sqlx::Error::Database(d)) if d.message().contains("Unknown thread") => {}
                Err(e) => return Err(self.sql(format!("end a session of {username}"))(e)),
            }
        }
        Ok(n)
    }

    async fn drop_login(&self, account: &Account, username: &str) -> Result<(), EngineError> {
        let _ = account;
        let mut c = self.conn().await?;
        self.marker_table(&mut c).await?;
        let variants = self.variants(&mut c, username).await?;
        if !variants.is_empty() {
            let objects = self.definer_of(&mut c, username).await?;
            if !objects.is_empty() {
                self.lock_variants(&mut c, username).await?;
                return Err(EngineError::Definer {
                    database: self.name.clone(),
                    role: username.to_owned(),
                    objects,
                });
            }
            let accounts: Vec<&str> = variants.iter().map(|(_, q)| q.as_str()).collect();
            self.exec(
                &mut c,
                &format!("DROP USER IF EXISTS {}", accounts.join(", ")),
                &format!("drop login {username}"),
            )
            .await?;
        }
        self.drop_event(&mut c, username).await?;
        sqlx::query(
            "DELETE FROM credrotd.managed WHERE name = ? AND kind IN ('login', 'alternating')",
        )
        .bind(username)
        .execute(&mut *c)
        .await
        .map_err(self.sql(format!("unmark {username}")))?;
        Ok(())
    }

    async fn login_info(&self, username: &str) -> Result<Option<LoginInfo>, EngineError> {
        let mut c = self.conn().await?;
        self.marker_table(&mut c).await?;
        let variants = self.variants(&mut c, username).await?;
        if variants.is_empty() {
            return Ok(None);
        }
        let marker = self.marker(&mut c, username).await?;
        Ok(Some(LoginInfo {
            can_login: variants.iter().any(|(u, _)| !u.locked),
            valid_until: marker.and_then(|m| m.valid_until),
        }))
    }

    async fn managed_logins(&self, account: &Account) -> Result<Vec<String>, EngineError> {
        let mut c = self.conn().await?;
        self.marker_table(&mut c).await?;
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(name AS CHAR) FROM credrotd.managed WHERE account = ? AND kind = 'login' ORDER BY name",
        )
        .bind(&account.name)
        .fetch_all(&mut *c)
        .await
        .map_err(self.sql(format!("list the logins of {}", account.name)))?;
        let mut out = Vec::new();
        for n in names {
            if !self.variants(&mut c, &n).await?.is_empty() {
                out.push(n);
            }
        }
        Ok(out)
    }

    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    async fn extend_login(&self, username: &str, until: DateTime<Utc>) -> Result<(), EngineError> {
        let mut c = self.conn().await?;
        self.marker_table(&mut c).await?;
        let variants = self.variants(&mut c, username).await?;
        if variants.is_empty() {
            return Ok(());
        }
        self.set_valid_until(&mut c, username, until).await?;
        let action = format!("extend the expiry of {username}");
        for (u, q) in &variants {
            // The interval counts from the last password change.
            let from = u
                .last_changed
                .and_then(|s| DateTime::from_timestamp(s, 0))
                .unwrap_or_else(Utc::now);
            self.exec(
                &mut c,
                &format!("ALTER USER {q} {}", expire_interval(from, until)),
                &action,
            )
            .await?;
        }
        self.schedule_lock(&mut c, username, until).await
    }

    async fn discard_old_password(&self, username: &str) -> Result<(), EngineError> {
        if self.server().await?.mariadb {
            return Ok(());
        }
        let mut c = self.conn().await?;
        for (_, q) in self.variants(&mut c, username).await? {
            self.exec(
                &mut c,
                &format!("ALTER USER {q} DISCARD OLD PASSWORD"),
                &format!("discard the old password of {username}"),
            )
            .await?;
        }
        Ok(())
    }

    async fn describe(&self) -> Result<Option<String>, EngineError> {
        let s = self.server().await?;
        let mut out = s.name();
        if s.mariadb {
            out.push_str(": passwords as mysql_native_password hashes (IDENTIFIED BY PASSWORD); static accounts have no overlap (one password per user)");
        } else {
            out.push_str(": passwords as caching_sha2_password hashes (IDENTIFIED WITH … AS); static accounts overlap with RETAIN CURRENT PASSWORD");
        }
        if s.events {
            out.push_str("; event scheduler on: an event locks each login at its expiry");
        } else {
            out.push_str(
                "; event scheduler off: expiry relies on credrotd and PASSWORD EXPIRE INTERVAL",
            );
        }
        Ok(Some(out))
    }

    async fn ping(&self) -> Result<(), EngineError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(self.sql("ping"))?;
        Ok(())
    }

    async fn saved_password(&self, role: &str) -> Result<Option<SavedPassword>, EngineError> {
        let mut c = self.conn().await?;
        self.marker_table(&mut c).await?;
        let variants = self.variants(&mut c, role).await?;
        let Some((u, _)) = variants.first() else {
            return Ok(None);
        };
        let marker = self.marker(&mut c, role).await?;
        Ok(Some(SavedPassword {
            verifier: Secret::new(format!("{}:{}", u.plugin, password::hex(u.auth.as_bytes()))),
            valid_until: marker.and_then(|m| m.valid_until),
        }))
    }

    async fn restore_password(&self, role: &str, saved: &SavedPassword) -> Result<(), EngineError> {
        let server = self.server().await?.clone();
        let Some((plugin, auth)) = saved.verifier.expose().split_once(':') else {
            return Err(EngineError::Invalid {
                database: self.name.clone(),
                what: format!("the saved password of {role} is not plugin:hash"),
            });
        };
        let bytes = auth
            .strip_prefix("0x")
            .filter(|h| h.len() % 2 == 0 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| {
                (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
                    .collect::<Option<Vec<u8>>>()
            });
        let (Some(bytes), true) = (
            bytes,
            !plugin.is_empty()
                && plugin
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        ) else {
            return Err(EngineError::Invalid {
                database: self.name.clone(),
                what: format!("the saved password of {role} is not plugin:0xHEX"),
            });
        };
        let mut c = self.conn().await?;
        let action = format!("restore the password of {role}");
        for (_, q) in self.variants(&mut c, role).await? {
            let stmt = if server.mariadb {
                // MariaDB's stored strings are text (`*HEX`, ed25519 base64).
                let text = self.quote(sql::string(&String::from_utf8_lossy(&bytes)))?;
                format!("ALTER USER {q} IDENTIFIED VIA {plugin} USING {text}")
            } else {
                format!("ALTER USER {q} IDENTIFIED WITH {plugin} AS {auth}")
            };
            self.exec(&mut c, &stmt, &action).await?;
        }
        if let Some(until) = saved.valid_until {
            self.set_valid_until(&mut c, role, until).await?;
        }
        Ok(())
    }

    async fn owner(&self, account: &Account) -> Result<Option<Owner>, EngineError> {
        let mut c = self.conn().await?;
        self.marker_table(&mut c).await?;
        let role = account.scoped_role();
        if self.users(&mut c, role).await?.is_empty() {
            return Ok(None);
        }
        match self.marker(&mut c, role).await? {
            Some(m) if m.kind == "scoped" && m.account == account.name => Ok(Some(Owner {
                ledger: m.owner.filter(|o| valid_ledger_id(o)),
                seen: m.seen,
            })),
            _ => Err(EngineError::NotManaged {
                database: self.name.clone(),
                role: role.to_owned(),
            }),
        }
    }

    async fn claim(
        &self,
        account: &Account,
        ledger: &str,
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        if !valid_ledger_id(ledger) {
            return Err(EngineError::Invalid {
                database: self.name.clone(),
                what: format!("invalid ledger id {ledger:?}"),
            });
        }
        self.owner(account)
            .await?
            .ok_or_else(|| EngineError::Missing {
                database: self.name.clone(),
                what: format!("role {}", account.scoped_role()),
            })?;
        let mut c = self.conn().await?;
        sqlx::query(
            "UPDATE credrotd.managed SET owner = ?, seen = ? WHERE name = ? AND kind = 'scoped'",
        )
        .bind(ledger)
        .bind(now.naive_utc())
        .bind(account.scoped_role())
        .execute(&mut *c)
        .await
        .map_err(self.sql(format!("claim role {}", account.scoped_role())))?;
        Ok(())
    }

    async fn hold_presence(&self, ledger: &str) -> Result<(), EngineError> {
        let name = short_name("credrotd-presence-", &[ledger]);
        let mut slot = self.presence.lock().await;
        if let Some(conn) = slot.as_mut() {
            if conn.ping().await.is_ok() {
                return Ok(());
            }
        }
        let mut conn = self
            .presence_opts
            .connect()
            .await
            .map_err(self.sql("connect to hold the presence lock"))?;
        let got: Option<i64> = sqlx::query_scalar("SELECT CAST(GET_LOCK(?, 0) AS SIGNED)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await
            .map_err(self.sql("take the presence lock"))?;
        if got != Some(1) {
            return Err(EngineError::Invalid {
                database: self.name.clone(),
                what: format!("another process holds the presence lock of ledger {ledger}"),
            });
        }
        *slot = Some(conn);
        Ok(())
    }

    async fn presence(&self, ledger: &str) -> Result<bool, EngineError> {
        let name = short_name("credrotd-presence-", &[ledger]);
        let used: i64 = sqlx::query_scalar("SELECT CAST(IS_USED_LOCK(?) IS NOT NULL AS SIGNED)")
            .bind(&name)
            .fetch_one(&self.pool)
            .await
            .map_err(self.sql("read the presence lock"))?;
        Ok(used == 1)
    }

    async fn check_admin(&self, accounts: &[&Account]) -> Result<Vec<AdminGap>, EngineError> {
        let server = self.server().await?.clone();
        let mut c = self.conn().await?;
        let current: String = sqlx::query_scalar("SELECT CURRENT_USER()")
            .fetch_one(&mut *c)
            .await
            .map_err(self.sql("read the current user"))?;
        let (user, host) = current.rsplit_once('@').unwrap_or((current.as_str(), "%"));
        let grantee = format!("'{user}'@'{host}'");
        let quser = self.quote(sql::user(user, host))?;
        let global: BTreeSet<String> = sqlx::query_scalar::<_, String>(
            "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = ?",
        )
        .bind(&grantee)
        .fetch_all(&mut *c)
        .await
        .map_err(self.sql("read the admin's privileges"))?
        .into_iter()
        .collect();
        let schema: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT TABLE_SCHEMA, PRIVILEGE_TYPE, IS_GRANTABLE FROM information_schema.SCHEMA_PRIVILEGES WHERE GRANTEE = ?",
        )
        .bind(&grantee)
        .fetch_all(&mut *c)
        .await
        .map_err(self.sql("read the admin's privileges"))?;
        let has_global = |p: &str| global.contains(p) || global.contains("ALL PRIVILEGES");
        let has_db = |db: &str, p: &str, grantable: bool| {
            has_global(p)
                || schema.iter().any(|(s, q, g)| {
                    (s == db || s == &db_pattern(db)) && q == p && (!grantable || g == "YES")
                })
        };
        let mut gaps = Vec::new();
        let mut need = |missing: String, fix: String| {
            gaps.push(AdminGap {
                missing,
                fix: Some(fix),
            })
        };
        if !has_global("CREATE USER") {
            need(
                format!(
                    "{current} lacks CREATE USER: it cannot create, alter or drop logins and roles"
                ),
                format!("GRANT CREATE USER ON *.* TO {quser}"),
            );
        }
        if !has_global("PROCESS") {
            need(
                format!("{current} lacks PROCESS: it cannot see the sessions of a revoked login"),
                format!("GRANT PROCESS ON *.* TO {quser}"),
            );
        }
        let (kill, kill_fix) = if server.mariadb {
            ("CONNECTION ADMIN", "CONNECTION ADMIN")
        } else {
            ("CONNECTION_ADMIN", "CONNECTION_ADMIN")
        };
        if !has_global(kill) && !has_global("SUPER") {
            need(
                format!("{current} lacks {kill}: it cannot end the sessions of a revoked login"),
                format!("GRANT {kill_fix} ON *.* TO {quser}"),
            );
        }
        if !server.mariadb && !has_global("ROLE_ADMIN") {
            need(
                format!("{current} lacks ROLE_ADMIN: it cannot grant scoped roles to logins"),
                format!("GRANT ROLE_ADMIN ON *.* TO {quser}"),
            );
        }
        if !has_db("mysql", "SELECT", false) {
            need(
                format!("{current} cannot read the grant tables (mysql.*)"),
                format!("GRANT SELECT ON mysql.* TO {quser}"),
            );
        }
        let marker_privs = ["SELECT", "INSERT", "UPDATE", "DELETE", "CREATE"];
        if marker_privs.iter().any(|p| !has_db(MARKER_DB, p, false)) {
            need(
                format!("{current} cannot keep its marker table {MARKER_DB}.managed"),
                format!("GRANT ALL ON {MARKER_DB}.* TO {quser}"),
            );
        }
        let mut per_db: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for a in accounts {
            for g in &a.grants {
                per_db
                    .entry(g.schema.as_str())
                    .or_default()
                    .extend(g.privileges.iter().copied());
            }
        }
        for (db, privs) in per_db {
            let lacking: Vec<&str> = privs.into_iter().filter(|p| !has_db(db, p, true)).collect();
            if !lacking.is_empty() {
                let qdb = self.quote(sql::ident(&db_pattern(db)))?;
                need(
                    format!("{current} cannot grant {} on database {db} (it needs them WITH GRANT OPTION)", lacking.join(", ")),
                    format!("GRANT {} ON {qdb}.* TO {quser} WITH GRANT OPTION", lacking.join(", ")),
                );
            }
        }
        Ok(gaps)
    }

    async fn sessions(&self) -> Result<Vec<String>, EngineError> {
        self.read_sessions().await
    }

    async fn catalog(&self) -> Result<super::catalog::Catalog, EngineError> {
        self.read_catalog().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where a connection goes and its TLS settings, as sqlx writes them back
    /// (a certificate path as `file: <path>`).
    fn route(o: &MySqlConnectOptions) -> String {
        let url = o.to_url_lossy();
        let tls: Vec<String> = url
            .query_pairs()
            .filter(|(k, _)| k.starts_with("ssl") || k == "socket")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "{}:{} {:?} {:?} {}",
            o.get_host(),
            o.get_port(),
            o.get_socket(),
            o.get_ssl_mode(),
            tls.join("&")
        )
    }

    /// Both verify logins (with and without the default database) go where
    /// the admin connection goes, with its TLS settings.
    #[tokio::test]
    async fn verify_logins_use_the_admin_connections_host_and_tls_settings() {
        for scheme in ["mysql", "mariadb"] {
            let db = Database {
                name: "shop".into(),
                engine: EngineKind::Mariadb,
                url: format!(
                    "{scheme}://admin@db1.internal:3307/shop?ssl-mode=VERIFY_IDENTITY\
                     &ssl-ca=/etc/credrotd/ca.pem&ssl-cert=/etc/credrotd/c.pem&ssl-key=/etc/credrotd/k.pem"
                ),
                password: crate::inventory::PasswordSource::None,
                publish_host: None,
                publish_port: None,
                publish_dbname: None,
                max_connections: 1,
                hosts: vec!["%".into()],
            };
            let my = Mysql::new(&db).unwrap();
            let admin = route(&my.pool.connect_options());
            assert_eq!(
                admin,
                "db1.internal:3307 None VerifyIdentity ssl-mode=VERIFY_IDENTITY\
                 &ssl-ca=file: /etc/credrotd/ca.pem&ssl-cert=file: /etc/credrotd/c.pem&ssl-key=file: /etc/credrotd/k.pem"
            );
            assert_eq!(my.base.get_database(), Some("shop"));
            assert_eq!(my.base_nodb.get_database(), None);
            for verify in [&my.base, &my.base_nodb] {
                let verify = verify.clone().username("shop_x").password("p");
                assert_eq!(route(&verify), admin);
            }
        }
    }

    #[test]
    fn database_patterns_escape_the_wildcards() {
        assert_eq!(db_pattern("orders"), "orders");
        assert_eq!(db_pattern("my_db"), "my\\_db");
        assert_eq!(db_pattern("100%\\x"), "100\\%\\\\x");
    }

    #[test]
    fn mariadb_gets_a_native_hash_and_mysql_a_caching_sha2_string() {
        let pw = Secret::new("correct horse battery staple 0123".into());
        let m = identified(true, &pw, false);
        assert_eq!(
            m,
            format!(
                "IDENTIFIED BY PASSWORD '{}'",
                password::native_password(&pw)
            )
        );
        assert!(!m.contains(pw.expose()));
        let my = identified(false, &pw, true);
        assert!(
            my.starts_with("IDENTIFIED WITH caching_sha2_password AS 0x"),
            "{my}"
        );
        assert!(my.ends_with(" RETAIN CURRENT PASSWORD"), "{my}");
        // `$A$005$`, a 20-byte salt and a 43-character digest, in hex.
        let hex_len = my["IDENTIFIED WITH caching_sha2_password AS 0x".len()..]
            .split(' ')
            .next()
            .unwrap()
            .len();
        assert_eq!(hex_len, 2 * 70);
        assert!(!identified(false, &pw, false).contains("RETAIN"));
    }

    #[test]
    fn the_expiry_backstop_covers_the_lifetime_in_whole_days() {
        let now = Utc::now();
        assert_eq!(expire_interval(now, now), "PASSWORD EXPIRE INTERVAL 1 DAY");
        assert_eq!(
            expire_interval(now, now + chrono::Duration::hours(25)),
            "PASSWORD EXPIRE INTERVAL 2 DAY"
        );
        assert_eq!(
            expire_interval(now, now + chrono::Duration::days(7)),
            "PASSWORD EXPIRE INTERVAL 7 DAY"
        );
    }

    #[test]
    fn lock_and_event_names_fit_the_server_limit() {
        let long = "x".repeat(80);
        assert!(short_name("credrotd-presence-", &[&long]).len() <= 64);
        assert!(expiry_event(&long).len() <= 64);
        assert_ne!(expiry_event("a_b"), expiry_event("a_c"));
        assert!(expiry_event("a")
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    }

    #[test]
    fn grant_table_elements_read_as_privileges() {
        assert_eq!(set_element("Select").as_deref(), Some("SELECT"));
        assert_eq!(set_element("Show view").as_deref(), Some("SHOW VIEW"));
        assert_eq!(
            set_element("Alter Routine").as_deref(),
            Some("ALTER ROUTINE")
        );
        assert_eq!(
            set_element("Delete versioning rows").as_deref(),
            Some("DELETE HISTORY")
        );
        assert_eq!(set_element("Grant"), None);
    }

    #[test]
    fn global_grant_lines_are_read_from_show_grants() {
        assert_eq!(
            parse_global_grant("GRANT USAGE ON *.* TO `r`"),
            Some((None, false))
        );
        assert_eq!(
            parse_global_grant("GRANT FILE, PROCESS ON *.* TO `r` WITH GRANT OPTION"),
            Some((Some("FILE, PROCESS".into()), true))
        );
        assert_eq!(parse_global_grant("GRANT SELECT ON `d`.* TO `r`"), None);
        assert_eq!(parse_global_grant("GRANT `other` TO `r`"), None);
    }

    #[test]
    fn targets_quote_every_name() {
        let t = Target::Table("we`ird".into(), "t'1".into());
        assert_eq!(t.sql().unwrap(), "`we``ird`.`t'1`");
        let r = Target::Routine("PROCEDURE", "d".into(), "p".into());
        assert_eq!(r.sql().unwrap(), "PROCEDURE `d`.`p`");
        assert_eq!(Target::Db(db_pattern("a_b")).sql().unwrap(), "`a\\_b`.*");
    }
}
