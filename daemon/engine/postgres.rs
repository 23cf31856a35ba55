//! PostgreSQL: scoped roles, login roles, reconciliation and verification.
//!
//! Passwords reach the server only as SCRAM-SHA-256 verifiers computed here
//! (`postgres-protocol`), so the plaintext never appears in the server's memory or
//! statement log. Identifiers and literals are quoted with `postgres-protocol`'s
//! implementation of PostgreSQL's own rules.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use postgres_protocol::escape::{escape_identifier as q, escape_literal as lit};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgPool, Postgres as Pg, Row, Transaction};

use super::{Change, Endpoint, Engine, EngineError, Login, LoginInfo, SavedPassword};
use crate::inventory::{Account, Database, ObjectKind, Objects, Strategy};
use crate::secret::Secret;

/// The comment that marks a scoped role as credrotd's.
fn scoped_comment(account: &str) -> String {
    format!("credrotd:scoped account={account}")
}

/// The comment that marks a per-rotation (ephemeral) login role.
fn login_comment(account: &str) -> String {
    format!("credrotd:login account={account}")
}

/// The comment that marks an alternating login role.
fn fixed_comment(account: &str) -> String {
    format!("credrotd:alternating account={account}")
}

const SAFE_ATTRIBUTES: &str = "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS";

/// A PostgreSQL target database.
pub struct Postgres {
    name: String,
    pool: PgPool,
    /// Options for verify logins: the admin URL's host, port and database.
    base: PgConnectOptions,
    endpoint: Endpoint,
}

impl Postgres {
    /// Prepares a lazily connecting admin pool. Reads the admin password now.
    pub fn new(db: &Database) -> Result<Self, EngineError> {
        let mut opts = PgConnectOptions::from_str(&db.url).map_err(|source| EngineError::Url {
            database: db.name.clone(),
            source,
        })?;
        if let Some(pw) = db.password.read().map_err(|source| EngineError::Password {
            database: db.name.clone(),
            source,
        })? {
            opts = opts.password(pw.expose());
        }
        // No statement logging at any level, slow statements included: the
        // statements carry SCRAM verifiers.
        opts = opts
            .application_name("credrotd")
            .disable_statement_logging();
        let endpoint = Endpoint {
            engine: "postgres",
            host: db
                .publish_host
                .clone()
                .unwrap_or_else(|| opts.get_host().to_owned()),
            port: db.publish_port.unwrap_or_else(|| opts.get_port()),
            dbname: db
                .publish_dbname
                .clone()
                .or_else(|| opts.get_database().map(str::to_owned))
                .unwrap_or_else(|| "postgres".into()),
        };
        // Verify logins go exactly where the admin connection goes, with its TLS
        // settings (sslmode, root certificate) and socket, as the new user.
        let base = opts.clone().application_name("credrotd-verify");
        let pool = PgPoolOptions::new()
            .max_connections(db.max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect_lazy_with(opts);
        Ok(Postgres {
            name: db.name.clone(),
            pool,
            base,
            endpoint,
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

    async fn exec(
        &self,
        tx: &mut Transaction<'_, Pg>,
        stmt: &str,
        action: &str,
    ) -> Result<(), EngineError> {
        tx.execute(stmt).await.map_err(self.sql(action))?;
        Ok(())
    }

    async fn begin(&self) -> Result<Transaction<'static, Pg>, EngineError> {
        self.pool
            .begin()
            .await
            .map_err(self.sql("begin transaction"))
    }

    /// The role's comment and attributes, if it exists.
    async fn role<'e, E>(&self, ex: E, name: &str) -> Result<Option<RoleRow>, EngineError>
    where
        E: Executor<'e, Database = Pg>,
    {
        let row = sqlx::query(
            "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls,
                    rolvaliduntil, shobj_description(oid, 'pg_authid') AS comment
             FROM pg_roles WHERE rolname = $1",
        )
        .bind(name)
        .fetch_optional(ex)
        .await
        .map_err(self.sql(format!("look up role {name}")))?;
        Ok(row.map(|r| RoleRow {
            can_login: r.get("rolcanlogin"),
            dangerous: [
                ("SUPERUSER", r.get::<bool, _>("rolsuper")),
                ("CREATEDB", r.get("rolcreatedb")),
                ("CREATEROLE", r.get("rolcreaterole")),
                ("REPLICATION", r.get("rolreplication")),
                ("BYPASSRLS", r.get("rolbypassrls")),
            ]
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| n)
            .collect(),
            valid_until: r.get("rolvaliduntil"),
            comment: r.get("comment"),
        }))
    }

    /// Computes the statements that bring the scoped role to the declared state.
    /// Runs inside `tx` so that apply sees the same catalog it planned against.
    async fn diff(
        &self,
        tx: &mut Transaction<'_, Pg>,
        account: &Account,
    ) -> Result<Vec<String>, EngineError> {
        let role = account.scoped_role();
        let mut out = Vec::new();
        let existing = self.role(&mut **tx, role).await?;
        match &existing {
            None => {
                out.push(format!(
                    "CREATE ROLE {} NOLOGIN {SAFE_ATTRIBUTES} INHERIT",
                    q(role)
                ));
                out.push(format!(
                    "COMMENT ON ROLE {} IS {}",
                    q(role),
                    lit(&scoped_comment(&account.name))
                ));
            }
            Some(r) => {
                if r.comment.as_deref() != Some(scoped_comment(&account.name).as_str()) {
                    return Err(EngineError::NotManaged {
                        database: self.name.clone(),
                        role: role.to_owned(),
                    });
                }
                if r.can_login || !r.dangerous.is_empty() {
                    out.push(format!("ALTER ROLE {} NOLOGIN {SAFE_ATTRIBUTES}", q(role)));
                }
            }
        }

        // Privileges on objects.
        let desired = self.desired_privileges(tx, account).await?;
        let actual = if existing.is_some() {
            self.actual_privileges(tx, role).await?
        } else {
            BTreeSet::new()
        };
        for (obj, privilege) in desired.difference(&actual) {
            out.push(format!("GRANT {privilege} ON {} TO {}", obj.sql(), q(role)));
        }
        for (obj, privilege) in actual.difference(&desired) {
            out.push(format!(
                "REVOKE {privilege} ON {} FROM {}",
                obj.sql(),
                q(role)
            ));
        }

        // Default privileges for objects created later ("*" grants).
        let desired = self.desired_defaults(tx, account).await?;
        let actual = if existing.is_some() {
            self.actual_defaults(tx, role).await?
        } else {
            BTreeSet::new()
        };
        for d in desired.difference(&actual) {
            out.push(format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT {} ON {} TO {}",
                q(&d.for_role),
                q(&d.schema),
                d.privilege,
                d.kind_sql(),
                q(role)
            ));
        }
        for d in actual.difference(&desired) {
            let schema = if d.schema.is_empty() {
                String::new()
            } else {
                format!(" IN SCHEMA {}", q(&d.schema))
            };
            out.push(format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {}{schema} REVOKE {} ON {} FROM {}",
                q(&d.for_role),
                d.privilege,
                d.kind_sql(),
                q(role)
            ));
        }

        // Memberships.
        let actual: BTreeSet<String> = if existing.is_some() {
            sqlx::query_scalar(
                "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                 JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1",
            )
            .bind(role)
            .fetch_all(&mut **tx)
            .await
            .map_err(self.sql(format!("read memberships of {role}")))?
            .into_iter()
            .collect()
        } else {
            BTreeSet::new()
        };
        let desired: BTreeSet<String> = account.member_of.iter().cloned().collect();
        for group in desired.difference(&actual) {
            match self.role(&mut **tx, group).await? {
                None => {
                    return Err(EngineError::Missing {
                        database: self.name.clone(),
                        what: format!("role {group} (member_of of account {})", account.name),
                    })
                }
                Some(g) if !g.dangerous.is_empty() => {
                    return Err(EngineError::Dangerous {
                        database: self.name.clone(),
                        role: group.clone(),
                        attributes: g.dangerous.join(", "),
                    })
                }
                Some(_) => out.push(format!("GRANT {} TO {}", q(group), q(role))),
            }
        }
        for group in actual.difference(&desired) {
            out.push(format!("REVOKE {} FROM {}", q(group), q(role)));
        }

        // Settings (ALTER ROLE ... SET), for row-level security keyed on them.
        let actual = if existing.is_some() {
            self.role_settings(tx, role).await?
        } else {
            Vec::new()
        };
        for (k, v) in &account.settings {
            if !actual.iter().any(|(ak, av)| ak == k && av == v) {
                out.push(format!(
                    "ALTER ROLE {} SET {} = {}",
                    q(role),
                    setting_name(k),
                    lit(v)
                ));
            }
        }
        for (k, _) in &actual {
            if !account.settings.contains_key(k) {
                out.push(format!("ALTER ROLE {} RESET {}", q(role), setting_name(k)));
            }
        }

        // A static account's existing role gets the scoped role's privileges.
        if let Strategy::Static { role: login, .. } = &account.strategy {
            if self.role(&mut **tx, login).await?.is_none() {
                return Err(EngineError::Missing {
                    database: self.name.clone(),
                    what: format!("role {login} (the static role of account {})", account.name),
                });
            }
            let member: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                 JOIN pg_roles u ON u.oid = m.member WHERE g.rolname = $1 AND u.rolname = $2)",
            )
            .bind(role)
            .bind(login)
            .fetch_one(&mut **tx)
            .await
            .map_err(self.sql(format!("read membership of {login}")))?;
            if !member {
                out.push(format!("GRANT {} TO {}", q(role), q(login)));
            }
        }
        Ok(out)
    }

    async fn schema_owner(
        &self,
        tx: &mut Transaction<'_, Pg>,
        schema: &str,
        account: &str,
    ) -> Result<String, EngineError> {
        sqlx::query_scalar(
            "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = $1",
        )
        .bind(schema)
        .fetch_optional(&mut **tx)
        .await
        .map_err(self.sql(format!("look up schema {schema}")))?
        .ok_or_else(|| EngineError::Missing {
            database: self.name.clone(),
            what: format!("schema {schema} (granted to account {account})"),
        })
    }

    async fn desired_privileges(
        &self,
        tx: &mut Transaction<'_, Pg>,
        account: &Account,
    ) -> Result<BTreeSet<(Obj, String)>, EngineError> {
        let mut out = BTreeSet::new();
        for g in &account.grants {
            self.schema_owner(tx, &g.schema, &account.name).await?;
            let objects: Vec<Obj> = match (&g.kind, &g.objects) {
                (ObjectKind::Schema, _) | (_, None) => vec![Obj::Schema(g.schema.clone())],
                (ObjectKind::Table | ObjectKind::Sequence, Some(sel)) => {
                    let kinds = if g.kind == ObjectKind::Table {
                        "rvmfp"
                    } else {
                        "S"
                    };
                    let rows: Vec<String> = sqlx::query_scalar(
                        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = $1 AND strpos($2, c.relkind::text) > 0 ORDER BY 1",
                    )
                    .bind(&g.schema)
                    .bind(kinds)
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(self.sql(format!("list {} in schema {}", g.kind.as_str(), g.schema)))?;
                    let names = select(sel, rows, |n| n.clone(), &self.name, g.kind, &g.schema)?;
                    names
                        .into_iter()
                        .map(|n| {
                            if g.kind == ObjectKind::Table {
                                Obj::Table(g.schema.clone(), n)
                            } else {
                                Obj::Sequence(g.schema.clone(), n)
                            }
                        })
                        .collect()
                }
                (ObjectKind::Function, Some(sel)) => {
                    let rows: Vec<(String, String)> = sqlx::query_as(
                        "SELECT p.proname::text, pg_get_function_identity_arguments(p.oid)
                         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                         WHERE n.nspname = $1 AND p.prokind IN ('f', 'p') ORDER BY 1, 2",
                    )
                    .bind(&g.schema)
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(self.sql(format!("list functions in schema {}", g.schema)))?;
                    select(sel, rows, |(n, _)| n.clone(), &self.name, g.kind, &g.schema)?
                        .into_iter()
                        .map(|(n, args)| Obj::Function(g.schema.clone(), n, args))
                        .collect()
                }
            };
            for obj in objects {
                for p in &g.privileges {
                    out.insert((obj.clone(), (*p).to_owned()));
                }
            }
        }
        Ok(out)
    }

    async fn actual_privileges(
        &self,
        tx: &mut Transaction<'_, Pg>,
        role: &str,
    ) -> Result<BTreeSet<(Obj, String)>, EngineError> {
        let mut out = BTreeSet::new();
        let action = || format!("read privileges of {role}");
        let schemas: Vec<(String, String)> = sqlx::query_as(
            "SELECT n.nspname::text, a.privilege_type FROM pg_namespace n, aclexplode(n.nspacl) a
             WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)",
        )
        .bind(role)
        .fetch_all(&mut **tx)
        .await
        .map_err(self.sql(action()))?;
        out.extend(schemas.into_iter().map(|(s, p)| (Obj::Schema(s), p)));
        let rels: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text, a.privilege_type
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
             WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)",
        )
        .bind(role)
        .fetch_all(&mut **tx)
        .await
        .map_err(self.sql(action()))?;
        out.extend(rels.into_iter().map(|(s, n, k, p)| {
            if k == "S" {
                (Obj::Sequence(s, n), p)
            } else {
                (Obj::Table(s, n), p)
            }
        }));
        let funcs: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT n.nspname::text, p.proname::text, pg_get_function_identity_arguments(p.oid), a.privilege_type
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace, aclexplode(p.proacl) a
             WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)",
        )
        .bind(role)
        .fetch_all(&mut **tx)
        .await
        .map_err(self.sql(action()))?;
        out.extend(
            funcs
                .into_iter()
                .map(|(s, n, args, p)| (Obj::Function(s, n, args), p)),
        );
        Ok(out)
    }

    async fn desired_defaults(
        &self,
        tx: &mut Transaction<'_, Pg>,
        account: &Account,
    ) -> Result<BTreeSet<DefaultAcl>, EngineError> {
        let mut out = BTreeSet::new();
        for g in &account.grants {
            if g.objects != Some(Objects::All) {
                continue;
            }
            let owner = self.schema_owner(tx, &g.schema, &account.name).await?;
            let objtype = match g.kind {
                ObjectKind::Table => 'r',
                ObjectKind::Sequence => 'S',
                ObjectKind::Function => 'f',
                ObjectKind::Schema => continue,
            };
            for p in &g.privileges {
                out.insert(DefaultAcl {
                    for_role: owner.clone(),
                    schema: g.schema.clone(),
                    objtype,
                    privilege: (*p).to_owned(),
                });
            }
        }
        Ok(out)
    }

    async fn actual_defaults(
        &self,
        tx: &mut Transaction<'_, Pg>,
        role: &str,
    ) -> Result<BTreeSet<DefaultAcl>, EngineError> {
        let rows: Vec<(String, Option<String>, String, String)> = sqlx::query_as(
            "SELECT r.rolname::text, n.nspname::text, d.defaclobjtype::text, a.privilege_type
             FROM pg_default_acl d JOIN pg_roles r ON r.oid = d.defaclrole
             LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace, aclexplode(d.defaclacl) a
             WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)",
        )
        .bind(role)
        .fetch_all(&mut **tx)
        .await
        .map_err(self.sql(format!("read default privileges of {role}")))?;
        Ok(rows
            .into_iter()
            .filter_map(|(for_role, schema, t, privilege)| {
                Some(DefaultAcl {
                    for_role,
                    schema: schema.unwrap_or_default(),
                    objtype: t.chars().next()?,
                    privilege,
                })
            })
            .collect())
    }

    async fn role_settings(
        &self,
        tx: &mut Transaction<'_, Pg>,
        role: &str,
    ) -> Result<Vec<(String, String)>, EngineError> {
        let rows: Vec<Vec<String>> = sqlx::query_scalar(
            "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
             WHERE r.rolname = $1 AND s.setdatabase = 0",
        )
        .bind(role)
        .fetch_all(&mut **tx)
        .await
        .map_err(self.sql(format!("read settings of {role}")))?;
        Ok(rows
            .into_iter()
            .flatten()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect())
    }

    /// Statements that give a login role the account's session defaults: run as
    /// the scoped role (so objects it creates belong to the account, not to the
    /// login), the account's settings, and the connection limit.
    fn login_defaults(account: &Account, username: &str) -> Vec<String> {
        let mut out = vec![format!(
            "ALTER ROLE {} SET role = {}",
            q(username),
            lit(account.scoped_role())
        )];
        for (k, v) in &account.settings {
            out.push(format!(
                "ALTER ROLE {} SET {} = {}",
                q(username),
                setting_name(k),
                lit(v)
            ));
        }
        out.push(format!(
            "ALTER ROLE {} CONNECTION LIMIT {}",
            q(username),
            account.connection_limit.unwrap_or(-1)
        ));
        out
    }
}

/// Setting names are validated as `ident(.ident)*`; quote each part.
fn setting_name(k: &str) -> String {
    k.split('.').map(q).collect::<Vec<_>>().join(".")
}

fn valid_until(t: DateTime<Utc>) -> String {
    lit(&t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn select<T: Clone>(
    sel: &Objects,
    rows: Vec<T>,
    name: impl Fn(&T) -> String,
    database: &str,
    kind: ObjectKind,
    schema: &str,
) -> Result<Vec<T>, EngineError> {
    match sel {
        Objects::All => Ok(rows),
        Objects::Named(names) => {
            let mut out = Vec::new();
            for n in names {
                let found: Vec<T> = rows.iter().filter(|r| name(r) == *n).cloned().collect();
                if found.is_empty() {
                    return Err(EngineError::Missing {
                        database: database.to_owned(),
                        what: format!("{} {schema}.{n}", kind.as_str().trim_end_matches('s')),
                    });
                }
                out.extend(found);
            }
            Ok(out)
        }
    }
}

struct RoleRow {
    can_login: bool,
    dangerous: Vec<&'static str>,
    valid_until: Option<DateTime<Utc>>,
    comment: Option<String>,
}

/// A database object a privilege is on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Obj {
    Schema(String),
    Table(String, String),
    Sequence(String, String),
    /// Schema, name, identity arguments (from the server).
    Function(String, String, String),
}

impl Obj {
    fn sql(&self) -> String {
        match self {
            Obj::Schema(s) => format!("SCHEMA {}", q(s)),
            Obj::Table(s, t) => format!("TABLE {}.{}", q(s), q(t)),
            Obj::Sequence(s, t) => format!("SEQUENCE {}.{}", q(s), q(t)),
            // The argument list comes from pg_get_function_identity_arguments, the
            // server's own rendering of the catalog, not from the inventory.
            // ROUTINE covers functions and procedures alike.
            Obj::Function(s, f, args) => format!("ROUTINE {}.{}({args})", q(s), q(f)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct DefaultAcl {
    for_role: String,
    /// Empty for a database-wide default.
    schema: String,
    objtype: char,
    privilege: String,
}

impl DefaultAcl {
    fn kind_sql(&self) -> &'static str {
        match self.objtype {
            'S' => "SEQUENCES",
            'f' => "FUNCTIONS",
            'T' => "TYPES",
            'n' => "SCHEMAS",
            _ => "TABLES",
        }
    }
}

/// Serializes grant changes in one database: concurrent GRANTs on one object can
/// fail with "tuple concurrently updated".
const RECONCILE_LOCK: i64 = 0x6372_6564_726f_7401;

#[async_trait]
impl Engine for Postgres {
    async fn reconcile(&self, account: &Account, apply: bool) -> Result<Vec<Change>, EngineError> {
        let mut tx = self.begin().await?;
        if !apply {
            self.exec(
                &mut tx,
                "SET TRANSACTION READ ONLY",
                "start read-only transaction",
            )
            .await?;
        }
        let mut stmts = self.diff(&mut tx, account).await?;
        if apply && !stmts.is_empty() {
            // Plan again under the lock so that two processes never apply the
            // same change twice.
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(RECONCILE_LOCK)
                .execute(&mut *tx)
                .await
                .map_err(self.sql("take reconcile lock"))?;
            stmts = self.diff(&mut tx, account).await?;
            for s in &stmts {
                self.exec(&mut tx, s, &format!("reconcile role {}", account.name))
                    .await?;
            }
            tx.commit().await.map_err(self.sql("commit reconcile"))?;
        } else {
            tx.rollback().await.map_err(self.sql("end transaction"))?;
        }
        Ok(stmts.into_iter().map(Change).collect())
    }

    async fn create_login(&self, account: &Account, login: &Login<'_>) -> Result<(), EngineError> {
        let verifier =
            postgres_protocol::password::scram_sha_256(login.password.expose().as_bytes());
        let mut tx = self.begin().await?;
        let action = format!("create login role {}", login.username);
        self.exec(
            &mut tx,
            &format!(
                "CREATE ROLE {} LOGIN {SAFE_ATTRIBUTES} INHERIT PASSWORD {} VALID UNTIL {} IN ROLE {}",
                q(login.username),
                lit(&verifier),
                valid_until(login.valid_until),
                q(account.scoped_role())
            ),
            &action,
        )
        .await?;
        self.exec(
            &mut tx,
            &format!(
                "COMMENT ON ROLE {} IS {}",
                q(login.username),
                lit(&login_comment(&account.name))
            ),
            &action,
        )
        .await?;
        for s in Self::login_defaults(account, login.username) {
            self.exec(&mut tx, &s, &action).await?;
        }
        tx.commit().await.map_err(self.sql(action))?;
        Ok(())
    }

    async fn ensure_fixed_login(
        &self,
        account: &Account,
        username: &str,
    ) -> Result<(), EngineError> {
        let mut tx = self.begin().await?;
        let action = format!("prepare login role {username}");
        match self.role(&mut *tx, username).await? {
            Some(r) if r.comment.as_deref() != Some(fixed_comment(&account.name).as_str()) => {
                return Err(EngineError::NotManaged {
                    database: self.name.clone(),
                    role: username.to_owned(),
                })
            }
            Some(r) => {
                // A long-lived role: put back the safe attributes if someone
                // changed them.
                if !r.dangerous.is_empty() {
                    self.exec(
                        &mut tx,
                        &format!("ALTER ROLE {} {SAFE_ATTRIBUTES}", q(username)),
                        &action,
                    )
                    .await?;
                }
            }
            None => {
                self.exec(
                    &mut tx,
                    &format!(
                        "CREATE ROLE {} NOLOGIN {SAFE_ATTRIBUTES} INHERIT IN ROLE {}",
                        q(username),
                        q(account.scoped_role())
                    ),
                    &action,
                )
                .await?;
                self.exec(
                    &mut tx,
                    &format!(
                        "COMMENT ON ROLE {} IS {}",
                        q(username),
                        lit(&fixed_comment(&account.name))
                    ),
                    &action,
                )
                .await?;
            }
        }
        tx.commit().await.map_err(self.sql(action))?;
        Ok(())
    }

    async fn set_password(&self, account: &Account, login: &Login<'_>) -> Result<(), EngineError> {
        let verifier =
            postgres_protocol::password::scram_sha_256(login.password.expose().as_bytes());
        let mut tx = self.begin().await?;
        let action = format!("set password of {}", login.username);
        if self.role(&mut *tx, login.username).await?.is_none() {
            return Err(EngineError::Missing {
                database: self.name.clone(),
                what: format!("role {}", login.username),
            });
        }
        self.exec(
            &mut tx,
            &format!(
                "ALTER ROLE {} LOGIN PASSWORD {} VALID UNTIL {}",
                q(login.username),
                lit(&verifier),
                valid_until(login.valid_until)
            ),
            &action,
        )
        .await?;
        if matches!(account.strategy, Strategy::Alternating) {
            for s in Self::login_defaults(account, login.username) {
                self.exec(&mut tx, &s, &action).await?;
            }
        }
        tx.commit().await.map_err(self.sql(action))?;
        Ok(())
    }

    async fn verify(&self, username: &str, password: &Secret) -> Result<(), EngineError> {
        let opts = self
            .base
            .clone()
            .username(username)
            .password(password.expose());
        let err = |source| EngineError::Verify {
            database: self.name.clone(),
            username: username.to_owned(),
            source,
        };
        let connect = tokio::time::timeout(Duration::from_secs(15), opts.connect());
        let mut conn = connect
            .await
            .map_err(|_| err(sqlx::Error::PoolTimedOut))?
            .map_err(err)?;
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut conn)
            .await
            .map_err(err)?;
        let _ = conn.close().await;
        if one == 1 {
            Ok(())
        } else {
            Err(err(sqlx::Error::RowNotFound))
        }
    }

    async fn disable_login(&self, username: &str) -> Result<(), EngineError> {
        let mut tx = self.begin().await?;
        if self.role(&mut *tx, username).await?.is_some() {
            self.exec(
                &mut tx,
                &format!("ALTER ROLE {} NOLOGIN", q(username)),
                &format!("disable login {username}"),
            )
            .await?;
        }
        tx.commit().await.map_err(self.sql("commit"))?;
        Ok(())
    }

    async fn terminate_sessions(&self, username: &str) -> Result<u64, EngineError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE usename = $1 AND pid <> pg_backend_pid()",
        )
        .bind(username)
        .fetch_one(&self.pool)
        .await
        .map_err(self.sql(format!("terminate sessions of {username}")))?;
        Ok(n.max(0) as u64)
    }

    async fn drop_login(&self, account: &Account, username: &str) -> Result<(), EngineError> {
        if username == account.scoped_role() {
            // Never reachable from the saga; a guard against a future bug.
            return Err(EngineError::NotManaged {
                database: self.name.clone(),
                role: username.to_owned(),
            });
        }
        let mut tx = self.begin().await?;
        let action = format!("drop login role {username}");
        if self.role(&mut *tx, username).await?.is_some() {
            for s in [
                format!("ALTER ROLE {} NOLOGIN", q(username)),
                format!(
                    "REASSIGN OWNED BY {} TO {}",
                    q(username),
                    q(account.scoped_role())
                ),
                format!("DROP OWNED BY {}", q(username)),
                format!("DROP ROLE {}", q(username)),
            ] {
                self.exec(&mut tx, &s, &action).await?;
            }
        }
        tx.commit().await.map_err(self.sql(action))?;
        Ok(())
    }

    async fn login_info(&self, username: &str) -> Result<Option<LoginInfo>, EngineError> {
        Ok(self.role(&self.pool, username).await?.map(|r| LoginInfo {
            can_login: r.can_login,
            valid_until: r.valid_until,
        }))
    }

    async fn managed_logins(&self, account: &Account) -> Result<Vec<String>, EngineError> {
        sqlx::query_scalar(
            "SELECT r.rolname::text FROM pg_shdescription d JOIN pg_roles r ON r.oid = d.objoid
             WHERE d.classoid = 'pg_authid'::regclass AND d.description = $1 ORDER BY 1",
        )
        .bind(login_comment(&account.name))
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql(format!("list login roles of {}", account.name)))
    }

    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    async fn extend_login(&self, username: &str, until: DateTime<Utc>) -> Result<(), EngineError> {
        let mut tx = self.begin().await?;
        if self.role(&mut *tx, username).await?.is_some() {
            self.exec(
                &mut tx,
                &format!(
                    "ALTER ROLE {} VALID UNTIL {}",
                    q(username),
                    valid_until(until)
                ),
                &format!("extend the expiry of {username}"),
            )
            .await?;
        }
        tx.commit().await.map_err(self.sql("commit"))?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), EngineError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(self.sql("connect"))?;
        Ok(())
    }

    async fn saved_password(&self, role: &str) -> Result<Option<SavedPassword>, EngineError> {
        // pg_authid is readable by superusers only; anyone else gets no saved
        // password and a failed static rotation is repaired by the next one.
        let row: Result<Option<(Option<String>, Option<DateTime<Utc>>)>, sqlx::Error> =
            sqlx::query_as("SELECT rolpassword, rolvaliduntil FROM pg_authid WHERE rolname = $1")
                .bind(role)
                .fetch_optional(&self.pool)
                .await;
        match row {
            Ok(Some((Some(verifier), valid_until))) => Ok(Some(SavedPassword {
                verifier: Secret::new(verifier),
                valid_until,
            })),
            Ok(_) => Ok(None),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => Ok(None),
            Err(source) => Err(EngineError::Sql {
                database: self.name.clone(),
                action: format!("read the password verifier of {role}"),
                source,
            }),
        }
    }

    async fn restore_password(&self, role: &str, saved: &SavedPassword) -> Result<(), EngineError> {
        let until = match saved.valid_until {
            Some(t) => valid_until(t),
            None => lit("infinity"),
        };
        let mut tx = self.begin().await?;
        self.exec(
            &mut tx,
            &format!(
                "ALTER ROLE {} PASSWORD {} VALID UNTIL {until}",
                q(role),
                lit(saved.verifier.expose())
            ),
            &format!("restore the password of {role}"),
        )
        .await?;
        tx.commit().await.map_err(self.sql("commit"))?;
        Ok(())
    }
}
