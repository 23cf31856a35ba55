//! Reads every user, role, role grant and privilege of a MariaDB or MySQL 8
//! server into a [`Catalog`] for `audit` and `who-can`. Read-only: nothing is
//! created, not even the marker table.
//!
//! Names are those of the rest of the catalog: a user is `user@host` (as
//! `CURRENT_USER()` spells the admin), a role its bare name (as role grants
//! name it; a MySQL 8 role is an account at `'%'`), MariaDB's `PUBLIC` role
//! `PUBLIC`. Where each part comes from:
//!
//! - accounts: `mysql.global_priv` (MariaDB: lock, role flag, password change
//!   and lifetime, as JSON) or `mysql.user` (MySQL 8), and the global grant
//!   option from `mysql.user.Grant_priv` (both);
//! - global privileges: `SHOW GRANTS` for each account, the one source that
//!   lists MariaDB's split `SUPER` privileges (`CONNECTION ADMIN`, …) and
//!   MySQL 8's dynamic ones alike;
//! - database, table, column and routine privileges: `mysql.db`,
//!   `tables_priv`, `columns_priv`, `procs_priv`;
//! - role grants: `mysql.roles_mapping` (MariaDB) or `mysql.role_edges`
//!   (MySQL 8);
//! - what credrotd manages: its marker table `credrotd.managed`.
//!
//! The grant tables are not transactional, so this is not one snapshot: an
//! account dropped while it is read is left out. Neither global nor
//! database-level grants record who made them: their grantor is
//! [`UNKNOWN_GRANTOR`]. Every name in a fix statement is quoted by
//! [`sql`]; a name that cannot be quoted safely gets a comment saying so
//! instead of a statement.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::mysql::{MySqlConnection, MySqlDatabaseError};
use sqlx::Executor;

use super::sql::{self, QuoteError};
use super::{set_element, Mysql, DB_COLUMNS, MARKER_DB};
use crate::engine::catalog::{
    Attribute, Catalog, CatalogRole, Managed, ManagedKind, Membership, Object, Privilege,
};
use crate::engine::{valid_ledger_id, EngineError};

/// The grantor of a global or database-level privilege: the grant tables
/// keep none for them.
pub(super) const UNKNOWN_GRANTOR: &str = "(unknown)";

/// Global privileges that reach past every grant: the server's files, every
/// session's statements, stopping or reloading the server, making accounts.
const DANGEROUS_GLOBAL: &[&str] = &[
    "SUPER",
    "FILE",
    "PROCESS",
    "SHUTDOWN",
    "CREATE USER",
    "RELOAD",
    "SYSTEM_USER",
];

/// `ER_NONEXISTING_GRANT`: `SHOW GRANTS` for an account that no longer exists.
const ER_NONEXISTING_GRANT: u16 = 1141;

/// One user or role, from the grant tables.
#[derive(Debug, Clone, Default)]
struct AccountRow {
    user: String,
    host: String,
    is_role: bool,
    locked: bool,
    /// Unix seconds of the last password change.
    last_changed: Option<i64>,
    /// Days of `PASSWORD EXPIRE INTERVAL`: `0` never; `None` or negative: the
    /// server's `default_password_lifetime`.
    lifetime: Option<i64>,
    /// `PASSWORD EXPIRE`d (MariaDB records it as a last change at 0).
    expired: bool,
    /// The global GRANT OPTION.
    grant_option: bool,
}

/// How an account is named in the catalog and in statements.
#[derive(Debug, Clone)]
struct Grantee {
    name: String,
    /// `'u'@'h'`, `'role'`, `PUBLIC`.
    sql: Result<String, QuoteError>,
    /// How `SHOW GRANTS` writes it after `TO`.
    shown: String,
}

/// `` `name` `` with backticks doubled, as `SHOW GRANTS` writes names.
fn backticked(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

fn is_public(mariadb: bool, user: &str, host: &str) -> bool {
    mariadb && host.is_empty() && user.eq_ignore_ascii_case("PUBLIC")
}

/// The catalog's name and the quoted form of `user`@`host`. A role without a
/// host (MariaDB) or at `'%'` (MySQL 8) is its bare name.
fn grantee(mariadb: bool, user: &str, host: &str, role: bool) -> Grantee {
    if is_public(mariadb, user, host) {
        return Grantee {
            name: "PUBLIC".into(),
            sql: Ok("PUBLIC".into()),
            shown: "PUBLIC".into(),
        };
    }
    let shown = if host.is_empty() {
        backticked(user)
    } else {
        format!("{}@{}", backticked(user), backticked(host))
    };
    if role && (host.is_empty() || host == "%") {
        Grantee {
            name: user.to_owned(),
            sql: sql::role(user),
            shown,
        }
    } else {
        Grantee {
            name: format!("{user}@{host}"),
            sql: sql::user(user, host),
            shown,
        }
    }
}

/// Every account's [`Grantee`], by user and host.
struct Names {
    mariadb: bool,
    known: HashMap<(String, String), Grantee>,
}

impl Names {
    /// A grant-table row may name an account that is gone meanwhile (or was
    /// never there): MariaDB's roles are the ones without a host.
    fn get(&self, user: &str, host: &str) -> Grantee {
        self.known
            .get(&(user.to_owned(), host.to_owned()))
            .cloned()
            .unwrap_or_else(|| grantee(self.mariadb, user, host, self.mariadb && host.is_empty()))
    }
}

/// A fix statement, or, when a name in it cannot be quoted safely, a comment
/// that says so (running it does nothing).
fn statement(s: Result<String, QuoteError>) -> String {
    s.unwrap_or_else(|e| format!("-- cannot be written safely: {e}"))
}

/// `REVOKE what ON on FROM who`, with the grant option when `grantable`
/// (MySQL keeps one grant option per object, apart from the privileges).
fn revoke(
    what: Result<String, QuoteError>,
    grantable: bool,
    on: &Result<String, QuoteError>,
    who: &Result<String, QuoteError>,
) -> String {
    statement((|| {
        let what = what?;
        let option = if grantable && what != "GRANT OPTION" {
            ", GRANT OPTION"
        } else {
            ""
        };
        Ok(format!(
            "REVOKE {what}{option} ON {} FROM {}",
            on.clone()?,
            who.clone()?
        ))
    })())
}

/// A database-level grant's pattern as the name of the database it is meant
/// for: the grant tables store `_`, `%` and `\` escaped with `\`.
fn unescape_db(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or('\\')
        } else {
            c
        });
    }
    out
}

/// The server's own accounts: its administrator and the system accounts it
/// creates (MariaDB's installer also creates an all-privilege `mysql@localhost`
/// for the operating-system user that owns the data directory).
fn bootstrap(mariadb: bool, user: &str, host: &str) -> bool {
    host == "localhost"
        && if mariadb {
            matches!(user, "root" | "mariadb.sys" | "mysql")
        } else {
            matches!(
                user,
                "root" | "mysql.sys" | "mysql.session" | "mysql.infoschema"
            )
        }
}

/// The global privileges a `SHOW GRANTS` line gives `shown` itself (not a
/// role it was granted: MariaDB lists those too), and whether the line ends
/// `WITH GRANT OPTION`; `None` for every other line. `USAGE` is no privilege.
fn global_line(line: &str, shown: &str) -> Option<(Vec<String>, bool)> {
    let rest = line.strip_prefix("GRANT ")?;
    let (privileges, after) = rest.split_once(" ON *.* TO ")?;
    let tail = after.strip_prefix(shown)?;
    if !(tail.is_empty() || tail.starts_with(' ')) {
        return None;
    }
    let list = privileges
        .split(',')
        .map(|p| p.trim().to_ascii_uppercase())
        .filter(|p| !p.is_empty() && p != "USAGE")
        .collect();
    Some((list, tail.trim_end().ends_with(" WITH GRANT OPTION")))
}

/// When the password stops working, as the server enforces it: the
/// `PASSWORD EXPIRE INTERVAL` (or the server's default lifetime) counted from
/// the last change. A `PASSWORD EXPIRE`d password has stopped working at a
/// time the server does not record: the Unix epoch stands for it.
fn password_expiry(a: &AccountRow, default_lifetime: i64) -> Option<DateTime<Utc>> {
    if a.is_role {
        return None;
    }
    if a.expired {
        return Some(DateTime::UNIX_EPOCH);
    }
    let days = match a.lifetime {
        Some(n) if n >= 0 => n,
        _ => default_lifetime,
    };
    if days <= 0 {
        return None;
    }
    let changed = a.last_changed.filter(|t| *t > 0)?;
    DateTime::from_timestamp(changed.saturating_add(days.saturating_mul(86_400)), 0)
}

/// What `credrotd.managed` says about a name.
#[derive(Debug, Clone)]
struct MarkerRow {
    kind: String,
    account: String,
    owner: Option<String>,
    valid_until: Option<DateTime<Utc>>,
}

/// The marker of a user or role, when its kind fits: a scoped role is a role,
/// a login a user (a static account's user is not marked as managed, as on
/// PostgreSQL).
fn managed(marker: Option<&MarkerRow>, is_role: bool) -> Option<Managed> {
    let m = marker?;
    let kind = match (m.kind.as_str(), is_role) {
        ("scoped", true) => ManagedKind::Scoped,
        ("login", false) => ManagedKind::Login,
        ("alternating", false) => ManagedKind::Alternating,
        _ => return None,
    };
    Some(Managed {
        kind,
        account: m.account.clone(),
        owner: (kind == ManagedKind::Scoped)
            .then(|| m.owner.clone().filter(|o| valid_ledger_id(o)))
            .flatten(),
    })
}

/// The powers of an account beyond its grants, each with its fix.
fn dangerous(
    a: &AccountRow,
    g: &Grantee,
    global: &[String],
    grant_option: bool,
    public: bool,
) -> Vec<Attribute> {
    let mut out: Vec<Attribute> = Vec::new();
    let mut push = |name: String, fix: String| {
        if !out.iter().any(|d| d.name == name) {
            out.push(Attribute { name, fix });
        }
    };
    let from = &g.sql;
    let held = |p: &str| global.iter().any(|h| h == p);
    if held("ALL PRIVILEGES") || held("ALL") {
        push(
            "ALL PRIVILEGES".into(),
            statement(
                from.clone()
                    .map(|q| format!("REVOKE ALL PRIVILEGES ON *.* FROM {q}")),
            ),
        );
        // ALL includes SUPER, the one that counts as an error.
        push(
            "SUPER".into(),
            statement(
                from.clone()
                    .map(|q| format!("REVOKE SUPER ON *.* FROM {q}")),
            ),
        );
    }
    for p in DANGEROUS_GLOBAL {
        if held(p) {
            push(
                (*p).to_owned(),
                statement(from.clone().map(|q| format!("REVOKE {p} ON *.* FROM {q}"))),
            );
        }
    }
    if grant_option {
        push(
            "GRANT OPTION".into(),
            statement(
                from.clone()
                    .map(|q| format!("REVOKE GRANT OPTION ON *.* FROM {q}")),
            ),
        );
    }
    if !a.is_role && !public {
        if a.host == "%" && !global.is_empty() {
            let list = global.join(", ");
            push(
                format!("{list} on *.* from any host ('%')"),
                statement(
                    from.clone()
                        .map(|q| format!("REVOKE {list} ON *.* FROM {q}")),
                ),
            );
        }
        if a.user.is_empty() {
            push(
                "an anonymous account: any user name logs in as it".into(),
                statement(from.clone().map(|q| format!("DROP USER {q}"))),
            );
        }
    }
    out
}

/// Rows of a grant table as strings (binary columns included).
type Rows = Vec<Vec<String>>;

impl Mysql {
    /// Users with a connection now, by user name (the process list does not
    /// say which `user@host` account matched). The admin's `PROCESS` lets it
    /// see every connection.
    pub(super) async fn read_sessions(&self) -> Result<Vec<String>, EngineError> {
        let mut c = self.conn().await?;
        sqlx::query_scalar(
            "SELECT DISTINCT CAST(USER AS CHAR) FROM information_schema.PROCESSLIST
             WHERE ID <> CONNECTION_ID() AND USER IS NOT NULL AND USER <> ''",
        )
        .fetch_all(&mut *c)
        .await
        .map_err(self.sql("read the sessions"))
    }

    pub(super) async fn read_catalog(&self) -> Result<Catalog, EngineError> {
        let server = self.server().await?.clone();
        let mariadb = server.mariadb;
        let mut c = self.conn().await?;
        let (admin, now, default_lifetime): (String, NaiveDateTime, i64) = sqlx::query_as(
            "SELECT CAST(CURRENT_USER() AS CHAR), UTC_TIMESTAMP(),
                    CAST(@@default_password_lifetime AS SIGNED)",
        )
        .fetch_one(&mut *c)
        .await
        .map_err(self.sql("read the current user"))?;
        let now = now.and_utc();
        let markers = self.catalog_markers(&mut c).await?;
        // Role grants: (role user, role host, member user, member host).
        let edges: Vec<(String, String, String, String)> = sqlx::query_as(if mariadb {
            "SELECT CAST(Role AS CHAR), '', CAST(User AS CHAR), CAST(Host AS CHAR)
             FROM mysql.roles_mapping"
        } else {
            "SELECT CAST(FROM_USER AS CHAR), CAST(FROM_HOST AS CHAR), CAST(TO_USER AS CHAR),
                    CAST(TO_HOST AS CHAR)
             FROM mysql.role_edges"
        })
        .fetch_all(&mut *c)
        .await
        .map_err(self.sql("read role grants"))?;
        let granted: BTreeSet<(&str, &str)> = edges
            .iter()
            .map(|(u, h, _, _)| (u.as_str(), h.as_str()))
            .collect();
        let mut accounts = self.catalog_accounts(&mut c).await?;
        if !mariadb {
            // A MySQL 8 role is an account: one that is granted, that
            // credrotd made as a scoped role, or that has the shape CREATE
            // ROLE gives (at '%', locked, no password, expired).
            for a in &mut accounts {
                let scoped =
                    a.host == "%" && markers.get(&a.user).is_some_and(|m| m.kind == "scoped");
                a.is_role |= granted.contains(&(a.user.as_str(), a.host.as_str())) || scoped;
            }
        }
        let names = Names {
            mariadb,
            known: accounts
                .iter()
                .map(|a| {
                    (
                        (a.user.clone(), a.host.clone()),
                        grantee(mariadb, &a.user, &a.host, a.is_role),
                    )
                })
                .collect(),
        };
        let who = |user: &str, host: &str| names.get(user, host);

        let mut catalog = Catalog {
            server: server.name(),
            admin,
            now,
            ..Catalog::default()
        };
        let mut gone: BTreeSet<String> = BTreeSet::new();
        for a in &accounts {
            let g = who(&a.user, &a.host);
            let public = is_public(mariadb, &a.user, &a.host);
            let Some((global, line_option)) = self.global_privileges(&mut c, &g).await? else {
                gone.insert(g.name);
                continue;
            };
            let grant_option = a.grant_option || line_option;
            for p in &global {
                catalog.privileges.push(Privilege {
                    grantee: g.name.clone(),
                    object: Object::Server,
                    privilege: p.clone(),
                    grantable: grant_option,
                    grantor: UNKNOWN_GRANTOR.into(),
                    owner: false,
                    revoke_sql: revoke(Ok(p.clone()), grant_option, &Ok("*.*".into()), &g.sql),
                });
            }
            if global.is_empty() && grant_option {
                catalog.privileges.push(Privilege {
                    grantee: g.name.clone(),
                    object: Object::Server,
                    privilege: "GRANT OPTION".into(),
                    grantable: true,
                    grantor: UNKNOWN_GRANTOR.into(),
                    owner: false,
                    revoke_sql: revoke(Ok("GRANT OPTION".into()), true, &Ok("*.*".into()), &g.sql),
                });
            }
            let marker = markers.get(&a.user);
            let managed = managed(marker, a.is_role);
            let server_expiry = password_expiry(a, default_lifetime);
            // A login's own expiry is the one credrotd recorded (the server's
            // interval is rounded up to whole days).
            let recorded = marker
                .filter(|_| {
                    managed
                        .as_ref()
                        .is_some_and(|m| m.kind != ManagedKind::Scoped)
                })
                .and_then(|m| m.valid_until);
            let valid_until = if a.expired {
                Some(
                    recorded
                        .filter(|t| *t <= now)
                        .unwrap_or(DateTime::UNIX_EPOCH),
                )
            } else {
                match (server_expiry, recorded) {
                    (Some(s), Some(r)) => Some(s.min(r)),
                    (s, r) => s.or(r),
                }
            };
            let drop_sql = if public {
                "REVOKE ALL PRIVILEGES, GRANT OPTION FROM PUBLIC".to_owned()
            } else if a.is_role && g.name == a.user {
                statement(g.sql.clone().map(|q| format!("DROP ROLE {q}")))
            } else {
                statement(g.sql.clone().map(|q| format!("DROP USER {q}")))
            };
            catalog.roles.push(CatalogRole {
                can_login: !a.is_role && !a.locked,
                valid_until,
                managed,
                dangerous: dangerous(a, &g, &global, grant_option, public),
                bootstrap: !a.is_role && bootstrap(mariadb, &a.user, &a.host),
                drop_sql,
                name: g.name,
            });
        }
        catalog.roles.sort_by(|a, b| a.name.cmp(&b.name));

        for (ru, rh, mu, mh) in &edges {
            let role = who(ru, rh);
            let member = who(mu, mh);
            if gone.contains(&role.name) || gone.contains(&member.name) {
                continue;
            }
            catalog.memberships.push(Membership {
                revoke_sql: statement((|| {
                    Ok(format!(
                        "REVOKE {} FROM {}",
                        role.sql.clone()?,
                        member.sql.clone()?
                    ))
                })()),
                role: role.name,
                member: member.name,
            });
        }
        catalog
            .memberships
            .sort_by(|a, b| (&a.role, &a.member).cmp(&(&b.role, &b.member)));

        let mut privileges = Vec::new();
        self.catalog_db_privileges(&mut c, &names, &mut privileges)
            .await?;
        self.catalog_object_privileges(&mut c, &names, &mut privileges)
            .await?;
        privileges.retain(|p| !gone.contains(&p.grantee));
        catalog.privileges.extend(privileges);
        Ok(catalog)
    }

    /// `credrotd.managed`, by name; empty when the table does not exist (yet).
    async fn catalog_markers(
        &self,
        c: &mut MySqlConnection,
    ) -> Result<HashMap<String, MarkerRow>, EngineError> {
        let exists: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = 'managed'",
        )
        .bind(MARKER_DB)
        .fetch_one(&mut *c)
        .await
        .map_err(self.sql("look for the marker table"))?;
        if exists == 0 {
            return Ok(HashMap::new());
        }
        // Name, kind, account, owner, valid_until.
        type Row = (
            String,
            String,
            String,
            Option<String>,
            Option<NaiveDateTime>,
        );
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT CAST(name AS CHAR), CAST(kind AS CHAR), CAST(account AS CHAR),
                        CAST(owner AS CHAR), valid_until FROM {MARKER_DB}.managed"
        ))
        .fetch_all(&mut *c)
        .await
        .map_err(self.sql("read the marker table"))?;
        Ok(rows
            .into_iter()
            .map(|(name, kind, account, owner, until)| {
                (
                    name,
                    MarkerRow {
                        kind,
                        account,
                        owner,
                        valid_until: until.map(|t| t.and_utc()),
                    },
                )
            })
            .collect())
    }

    /// Every user and role. (MySQL 8's roles are told apart by the caller.)
    async fn catalog_accounts(
        &self,
        c: &mut MySqlConnection,
    ) -> Result<Vec<AccountRow>, EngineError> {
        let mariadb = self.server().await?.mariadb;
        let q = if mariadb {
            "SELECT CAST(g.User AS CHAR), CAST(g.Host AS CHAR),
                    CAST(COALESCE(JSON_VALUE(g.Priv, '$.is_role') IN ('1', 'true'), 0) AS SIGNED),
                    CAST(COALESCE(JSON_VALUE(g.Priv, '$.account_locked') IN ('1', 'true'), 0) AS SIGNED),
                    CAST(JSON_VALUE(g.Priv, '$.password_last_changed') AS SIGNED),
                    CAST(JSON_VALUE(g.Priv, '$.password_lifetime') AS SIGNED),
                    CAST(COALESCE(JSON_VALUE(g.Priv, '$.password_last_changed') = '0', 0) AS SIGNED),
                    CAST(COALESCE(u.Grant_priv = 'Y', 0) AS SIGNED)
             FROM mysql.global_priv g
             LEFT JOIN mysql.user u ON u.User = g.User AND u.Host = g.Host
             ORDER BY g.User, g.Host"
        } else {
            "SELECT CAST(User AS CHAR), CAST(Host AS CHAR),
                    CAST(Host = '%' AND (plugin = '' OR (account_locked = 'Y'
                         AND authentication_string = '' AND password_expired = 'Y')) AS SIGNED),
                    CAST(account_locked = 'Y' AS SIGNED),
                    CAST(UNIX_TIMESTAMP(password_last_changed) AS SIGNED),
                    CAST(password_lifetime AS SIGNED),
                    CAST(password_expired = 'Y' AS SIGNED),
                    CAST(Grant_priv = 'Y' AS SIGNED)
             FROM mysql.user ORDER BY User, Host"
        };
        type Row = (String, String, i64, i64, Option<i64>, Option<i64>, i64, i64);
        let rows: Vec<Row> = sqlx::query_as(q)
            .fetch_all(&mut *c)
            .await
            .map_err(self.sql("read users and roles"))?;
        Ok(rows
            .into_iter()
            .map(
                |(user, host, role, locked, last_changed, lifetime, expired, grant)| AccountRow {
                    user,
                    host,
                    is_role: role != 0,
                    locked: locked != 0,
                    last_changed,
                    lifetime,
                    expired: expired != 0 && role == 0,
                    grant_option: grant != 0,
                },
            )
            .collect())
    }

    /// The global privileges `SHOW GRANTS` lists for the account, and whether
    /// a line of them has the grant option; `None` when the account was
    /// dropped meanwhile.
    async fn global_privileges(
        &self,
        c: &mut MySqlConnection,
        g: &Grantee,
    ) -> Result<Option<(Vec<String>, bool)>, EngineError> {
        let q = g.sql.clone().map_err(|e| EngineError::Invalid {
            database: self.name.clone(),
            what: format!("cannot read the grants of {}: {e}", g.name),
        })?;
        let action = format!("read the grants of {}", g.name);
        let rows = match c.fetch_all(format!("SHOW GRANTS FOR {q}").as_str()).await {
            Ok(rows) => rows,
            Err(sqlx::Error::Database(d))
                if d.try_downcast_ref::<MySqlDatabaseError>()
                    .is_some_and(|e| e.number() == ER_NONEXISTING_GRANT) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(self.sql(action)(e)),
        };
        let mut privileges: Vec<String> = Vec::new();
        let mut option = false;
        for row in rows {
            let line: String = sqlx::Row::try_get::<String, _>(&row, 0)
                .or_else(|_| {
                    sqlx::Row::try_get::<Vec<u8>, _>(&row, 0)
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                })
                .map_err(self.sql(action.clone()))?;
            if let Some((list, o)) = global_line(&line, &g.shown) {
                option |= o;
                for p in list {
                    if !privileges.contains(&p) {
                        privileges.push(p);
                    }
                }
            }
        }
        Ok(Some((privileges, option)))
    }

    async fn rows(
        &self,
        c: &mut MySqlConnection,
        q: &str,
        what: &str,
    ) -> Result<Rows, EngineError> {
        let rows = c
            .fetch_all(q)
            .await
            .map_err(self.sql(format!("read {what}")))?;
        rows.iter()
            .map(|row| {
                (0..sqlx::Row::len(row))
                    .map(|i| {
                        sqlx::Row::try_get::<Option<String>, _>(row, i)
                            .or_else(|_| {
                                sqlx::Row::try_get::<Option<Vec<u8>>, _>(row, i)
                                    .map(|b| b.map(|b| String::from_utf8_lossy(&b).into_owned()))
                            })
                            .map(Option::unwrap_or_default)
                    })
                    .collect::<Result<Vec<String>, _>>()
            })
            .collect::<Result<Rows, _>>()
            .map_err(self.sql(format!("read {what}")))
    }

    /// Database-level privileges (`db.*`) from `mysql.db`.
    async fn catalog_db_privileges(
        &self,
        c: &mut MySqlConnection,
        names: &Names,
        out: &mut Vec<Privilege>,
    ) -> Result<(), EngineError> {
        let mariadb = names.mariadb;
        let who = |user: &str, host: &str| names.get(user, host);
        let mut columns: Vec<(&str, &str)> = DB_COLUMNS.to_vec();
        if mariadb {
            columns.push(("Delete_history_priv", "DELETE HISTORY"));
        }
        let flags: Vec<String> = columns
            .iter()
            .map(|(col, _)| format!("CAST({col} = 'Y' AS SIGNED)"))
            .collect();
        let q = format!(
            "SELECT CAST(User AS CHAR), CAST(Host AS CHAR), CAST(Db AS CHAR),
                    CAST(CONCAT_WS('', {}, CAST(Grant_priv = 'Y' AS SIGNED)) AS CHAR)
             FROM mysql.db ORDER BY Db, User, Host",
            flags.join(", ")
        );
        for row in self.rows(c, &q, "database privileges").await? {
            let [user, host, pattern, bits] = &row[..] else {
                continue;
            };
            let bits = bits.as_bytes();
            let grantable = bits.get(columns.len()) == Some(&b'1');
            let g = who(user, host);
            let on = sql::ident(pattern).map(|d| format!("{d}.*"));
            let mut held: Vec<&str> = columns
                .iter()
                .enumerate()
                .filter(|(i, _)| bits.get(*i) == Some(&b'1'))
                .map(|(_, (_, p))| *p)
                .collect();
            if held.is_empty() && grantable {
                held.push("GRANT OPTION");
            }
            for p in held {
                out.push(Privilege {
                    grantee: g.name.clone(),
                    object: Object::Schema(unescape_db(pattern)),
                    privilege: p.to_owned(),
                    grantable,
                    grantor: UNKNOWN_GRANTOR.into(),
                    owner: false,
                    revoke_sql: revoke(Ok(p.to_owned()), grantable, &on, &g.sql),
                });
            }
        }
        Ok(())
    }

    /// Table, column and routine privileges.
    async fn catalog_object_privileges(
        &self,
        c: &mut MySqlConnection,
        names: &Names,
        out: &mut Vec<Privilege>,
    ) -> Result<(), EngineError> {
        let who = |user: &str, host: &str| names.get(user, host);
        let grantor = |g: &str| {
            if g.is_empty() {
                UNKNOWN_GRANTOR.to_owned()
            } else {
                g.to_owned()
            }
        };
        // (user, host, db, table) -> (grantor, grant option)
        let mut tables: HashMap<(String, String, String, String), (String, bool)> = HashMap::new();
        let q = "SELECT CAST(User AS CHAR), CAST(Host AS CHAR), CAST(Db AS CHAR),
                        CAST(Table_name AS CHAR), CAST(Grantor AS CHAR), CAST(Table_priv AS CHAR)
                 FROM mysql.tables_priv ORDER BY Db, Table_name, User, Host";
        for row in self.rows(c, q, "table privileges").await? {
            let [user, host, db, table, by, privs] = &row[..] else {
                continue;
            };
            let grantable = privs.split(',').any(|e| e.eq_ignore_ascii_case("grant"));
            tables.insert(
                (user.clone(), host.clone(), db.clone(), table.clone()),
                (grantor(by), grantable),
            );
            let g = who(user, host);
            let on = (|| Ok(format!("{}.{}", sql::ident(db)?, sql::ident(table)?)))();
            let mut held: Vec<String> = privs.split(',').filter_map(set_element).collect();
            // A column grant alone leaves an empty Table_priv.
            if held.is_empty() && grantable {
                held.push("GRANT OPTION".into());
            }
            for p in held {
                out.push(Privilege {
                    grantee: g.name.clone(),
                    object: Object::Table {
                        schema: db.clone(),
                        name: table.clone(),
                    },
                    revoke_sql: revoke(Ok(p.clone()), grantable, &on, &g.sql),
                    privilege: p,
                    grantable,
                    grantor: grantor(by),
                    owner: false,
                });
            }
        }
        let q = "SELECT CAST(User AS CHAR), CAST(Host AS CHAR), CAST(Db AS CHAR),
                        CAST(Table_name AS CHAR), CAST(Column_name AS CHAR), CAST(Column_priv AS CHAR)
                 FROM mysql.columns_priv ORDER BY Db, Table_name, Column_name, User, Host";
        for row in self.rows(c, q, "column privileges").await? {
            let [user, host, db, table, column, privs] = &row[..] else {
                continue;
            };
            let (by, grantable) = tables
                .get(&(user.clone(), host.clone(), db.clone(), table.clone()))
                .cloned()
                .unwrap_or_else(|| (UNKNOWN_GRANTOR.to_owned(), false));
            let g = who(user, host);
            let on = (|| Ok(format!("{}.{}", sql::ident(db)?, sql::ident(table)?)))();
            for p in privs.split(',').filter_map(set_element) {
                // The grant option is the table's: revoking it here would take
                // it from the table's privileges too.
                let what = sql::ident(column).map(|col| format!("{p} ({col})"));
                out.push(Privilege {
                    grantee: g.name.clone(),
                    object: Object::Column {
                        schema: db.clone(),
                        table: table.clone(),
                        column: column.clone(),
                    },
                    revoke_sql: revoke(what, false, &on, &g.sql),
                    privilege: p,
                    grantable,
                    grantor: by.clone(),
                    owner: false,
                });
            }
        }
        let q = "SELECT CAST(User AS CHAR), CAST(Host AS CHAR), CAST(Db AS CHAR),
                        CAST(Routine_name AS CHAR), CAST(Routine_type AS CHAR),
                        CAST(Grantor AS CHAR), CAST(Proc_priv AS CHAR)
                 FROM mysql.procs_priv ORDER BY Db, Routine_name, User, Host";
        for row in self.rows(c, q, "routine privileges").await? {
            let [user, host, db, name, kind, by, privs] = &row[..] else {
                continue;
            };
            let kind = kind.to_ascii_uppercase();
            let keyword = match kind.as_str() {
                "FUNCTION" | "PROCEDURE" | "PACKAGE" | "PACKAGE BODY" => kind.as_str(),
                _ => "PROCEDURE",
            };
            let grantable = privs.split(',').any(|e| e.eq_ignore_ascii_case("grant"));
            let g = who(user, host);
            let on = (|| {
                Ok(format!(
                    "{keyword} {}.{}",
                    sql::ident(db)?,
                    sql::ident(name)?
                ))
            })();
            let mut held: Vec<String> = privs.split(',').filter_map(set_element).collect();
            if held.is_empty() && grantable {
                held.push("GRANT OPTION".into());
            }
            for p in held {
                out.push(Privilege {
                    grantee: g.name.clone(),
                    object: Object::Routine {
                        schema: db.clone(),
                        name: name.clone(),
                    },
                    revoke_sql: revoke(Ok(p.clone()), grantable, &on, &g.sql),
                    privilege: p,
                    grantable,
                    grantor: grantor(by),
                    owner: false,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(user: &str, host: &str) -> AccountRow {
        AccountRow {
            user: user.into(),
            host: host.into(),
            ..AccountRow::default()
        }
    }

    #[test]
    fn users_are_user_at_host_and_roles_bare() {
        let u = grantee(true, "app", "%", false);
        assert_eq!(u.name, "app@%");
        assert_eq!(u.sql.unwrap(), "'app'@'%'");
        assert_eq!(u.shown, "`app`@`%`");
        let r = grantee(true, "we`ird'r", "", true);
        assert_eq!(r.name, "we`ird'r");
        assert_eq!(r.sql.unwrap(), "'we`ird''r'");
        assert_eq!(r.shown, "`we``ird'r`");
        // MySQL 8: a role is an account at '%'.
        let r = grantee(false, "readers", "%", true);
        assert_eq!(r.name, "readers");
        assert_eq!(r.shown, "`readers`@`%`");
        let p = grantee(true, "PUBLIC", "", true);
        assert_eq!(
            (p.name.as_str(), p.sql.unwrap()),
            ("PUBLIC", "PUBLIC".into())
        );
        let anon = grantee(true, "", "localhost", false);
        assert_eq!(anon.name, "@localhost");
        assert_eq!(anon.sql.unwrap(), "''@'localhost'");
    }

    #[test]
    fn an_unquotable_name_gets_a_comment_never_a_statement() {
        let g = grantee(true, "x", "Upper", false);
        let fix = revoke(Ok("SELECT".into()), false, &Ok("*.*".into()), &g.sql);
        assert!(fix.starts_with("-- cannot be written safely: "), "{fix}");
        assert!(!fix.contains('\n'));
    }

    #[test]
    fn revokes_take_the_grant_option_with_a_grantable_privilege() {
        let who = Ok("'u'@'%'".to_owned());
        let on = Ok("`d`.`t`".to_owned());
        assert_eq!(
            revoke(Ok("SELECT".into()), true, &on, &who),
            "REVOKE SELECT, GRANT OPTION ON `d`.`t` FROM 'u'@'%'"
        );
        assert_eq!(
            revoke(Ok("GRANT OPTION".into()), true, &on, &who),
            "REVOKE GRANT OPTION ON `d`.`t` FROM 'u'@'%'"
        );
        assert_eq!(
            revoke(Ok("INSERT".into()), false, &on, &who),
            "REVOKE INSERT ON `d`.`t` FROM 'u'@'%'"
        );
    }

    #[test]
    fn database_patterns_are_unescaped() {
        assert_eq!(unescape_db("my\\_db"), "my_db");
        assert_eq!(unescape_db("100\\%\\\\x"), "100%\\x");
        assert_eq!(unescape_db("plain"), "plain");
        assert_eq!(unescape_db("trailing\\"), "trailing\\");
        assert_eq!(unescape_db(&super::super::db_pattern("a_b%c")), "a_b%c");
    }

    #[test]
    fn show_grants_lines_give_the_account_its_own_global_privileges() {
        let me = "`u4`@`%`";
        assert_eq!(
            global_line(
                "GRANT PROCESS ON *.* TO `u4`@`%` IDENTIFIED BY PASSWORD '*B69' WITH GRANT OPTION MAX_USER_CONNECTIONS 5",
                me
            ),
            Some((vec!["PROCESS".into()], false))
        );
        assert_eq!(
            global_line("GRANT USAGE ON *.* TO `u4`@`%`", me),
            Some((vec![], false))
        );
        assert_eq!(
            global_line(
                "GRANT SELECT, RELOAD, FILE ON *.* TO `u4`@`%` WITH GRANT OPTION",
                me
            ),
            Some((vec!["SELECT".into(), "RELOAD".into(), "FILE".into()], true))
        );
        // MySQL 8's dynamic privileges, without spaces.
        assert_eq!(
            global_line("GRANT SYSTEM_USER,ROLE_ADMIN ON *.* TO `u4`@`%`", me),
            Some((vec!["SYSTEM_USER".into(), "ROLE_ADMIN".into()], false))
        );
        // Another account's line (MariaDB lists a role's roles), a prefix of
        // the name, object grants and role grants are not this account's.
        assert_eq!(global_line("GRANT FILE ON *.* TO `r1`", "`r`"), None);
        assert_eq!(global_line("GRANT FILE ON *.* TO `u4`@`%x`", me), None);
        assert_eq!(global_line("GRANT SELECT ON `d`.* TO `u4`@`%`", me), None);
        assert_eq!(global_line("GRANT `r1` TO `u4`@`%`", me), None);
        assert_eq!(
            global_line("GRANT FILE ON *.* TO PUBLIC", "PUBLIC"),
            Some((vec!["FILE".into()], false))
        );
    }

    #[test]
    fn the_servers_own_accounts_are_bootstrap() {
        assert!(bootstrap(true, "root", "localhost"));
        assert!(bootstrap(true, "mariadb.sys", "localhost"));
        assert!(!bootstrap(true, "root", "%"));
        assert!(!bootstrap(true, "mysql.session", "localhost"));
        assert!(bootstrap(false, "mysql.session", "localhost"));
        assert!(bootstrap(false, "mysql.infoschema", "localhost"));
        assert!(!bootstrap(false, "mariadb.sys", "localhost"));
    }

    #[test]
    fn password_expiry_follows_the_lifetime_and_the_expired_flag() {
        let mut a = user("u", "%");
        a.last_changed = Some(1_000_000);
        assert_eq!(password_expiry(&a, 0), None);
        assert_eq!(
            password_expiry(&a, 2),
            DateTime::from_timestamp(1_000_000 + 2 * 86_400, 0)
        );
        a.lifetime = Some(3);
        assert_eq!(
            password_expiry(&a, 0),
            DateTime::from_timestamp(1_000_000 + 3 * 86_400, 0)
        );
        a.lifetime = Some(0);
        assert_eq!(password_expiry(&a, 30), None);
        a.lifetime = Some(-1);
        assert_eq!(
            password_expiry(&a, 1),
            DateTime::from_timestamp(1_000_000 + 86_400, 0)
        );
        a.expired = true;
        assert_eq!(password_expiry(&a, 0), Some(DateTime::UNIX_EPOCH));
        a.is_role = true;
        assert_eq!(password_expiry(&a, 1), None);
    }

    #[test]
    fn dangerous_powers_each_come_with_their_fix() {
        let a = user("ops", "%");
        let g = grantee(true, "ops", "%", false);
        let d = dangerous(&a, &g, &["FILE".into(), "SELECT".into()], true, false);
        let names: Vec<&str> = d.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "FILE",
                "GRANT OPTION",
                "FILE, SELECT on *.* from any host ('%')"
            ]
        );
        assert_eq!(d[0].fix, "REVOKE FILE ON *.* FROM 'ops'@'%'");
        assert_eq!(d[1].fix, "REVOKE GRANT OPTION ON *.* FROM 'ops'@'%'");
        assert_eq!(d[2].fix, "REVOKE FILE, SELECT ON *.* FROM 'ops'@'%'");
        // ALL PRIVILEGES is SUPER too; a local user with nothing global is fine.
        let a = user("dba", "localhost");
        let g = grantee(true, "dba", "localhost", false);
        let d = dangerous(&a, &g, &["ALL PRIVILEGES".into()], false, false);
        let names: Vec<&str> = d.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["ALL PRIVILEGES", "SUPER"]);
        assert!(dangerous(&a, &g, &[], false, false).is_empty());
        // An anonymous user is dangerous by itself.
        let a = user("", "localhost");
        let g = grantee(true, "", "localhost", false);
        let d = dangerous(&a, &g, &[], false, false);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].fix, "DROP USER ''@'localhost'");
        // A role's global privileges count, its (absent) host does not.
        let mut r = user("grp", "");
        r.is_role = true;
        let g = grantee(true, "grp", "", true);
        let d = dangerous(&r, &g, &["PROCESS".into()], false, false);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].fix, "REVOKE PROCESS ON *.* FROM 'grp'");
    }

    #[test]
    fn markers_apply_only_to_the_kind_they_name() {
        let m = |kind: &str| MarkerRow {
            kind: kind.into(),
            account: "etl".into(),
            owner: Some("prod-1".into()),
            valid_until: None,
        };
        let scoped = managed(Some(&m("scoped")), true).unwrap();
        assert_eq!(scoped.kind, ManagedKind::Scoped);
        assert_eq!(scoped.owner.as_deref(), Some("prod-1"));
        assert_eq!(managed(Some(&m("scoped")), false), None);
        let login = managed(Some(&m("login")), false).unwrap();
        assert_eq!((login.kind, login.owner), (ManagedKind::Login, None));
        assert_eq!(
            managed(Some(&m("alternating")), false).map(|m| m.kind),
            Some(ManagedKind::Alternating)
        );
        assert_eq!(managed(Some(&m("static")), false), None);
        assert_eq!(managed(None, false), None);
    }
}
