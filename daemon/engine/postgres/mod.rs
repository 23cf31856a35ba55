//! PostgreSQL: scoped roles, login roles, reconciliation and verification.
//!
//! Passwords reach the server only as SCRAM-SHA-256 verifiers computed here
//! (`postgres-protocol`), so the plaintext never appears in the server's memory or
//! statement log. Identifiers and literals are quoted with `postgres-protocol`'s
//! implementation of PostgreSQL's own rules.
//!
//! The admin needs no superuser: everything here works for a `LOGIN CREATEROLE`
//! role that holds what it hands out `WITH GRANT OPTION` (PostgreSQL 15, and 16+
//! with its per-role `ADMIN OPTION`); what such an admin may not do is reported
//! (stuck items, [`Engine::check_admin`]) rather than failing issuance. README:
//! "The admin role".

/// The head of a query over the objects whose ACL names one of some roles: `r`,
/// the roles (`pg_roles` rows matching `$role_filter`, e.g. `"rolname = $1"`);
/// `m`, their `pg_shdepend` ACL entries (`deptype = 'a'`) in this database, and
/// for the database itself (a shared object: `dbid = 0`). PostgreSQL records an
/// entry for every role an ACL mentions (grantee or grantor, never the owner),
/// by `classid`/`objid`, and a column's with `objsubid` = its `attnum`; the
/// index on the role finds them without reading whole catalogs, whose ACLs grow
/// with every account. Followed by a `SELECT` that takes from `m` only the
/// objects to explode, and filters the entries to `r` as grantees.
///
/// An ACL is exploded one item at a time (`unnest(acl) i(item),
/// aclexplode(ARRAY[i.item])`): `aclexplode` on a whole large ACL costs far
/// more than its length (measured on PostgreSQL 15, a table granted to 1,000
/// roles: 8-12 ms for one role's entries, 1.3 ms item by item), and the objects
/// every account is granted on carry one item per account.
macro_rules! acl_mentions {
    ($role_filter:literal) => {
        concat!(
            "WITH r AS (SELECT oid FROM pg_roles WHERE ",
            $role_filter,
            "),
m AS (SELECT classid, objid, objsubid FROM pg_shdepend
      WHERE refclassid = 'pg_authid'::regclass AND refobjid IN (SELECT oid FROM r)
        AND deptype = 'a'
        AND dbid IN (0, (SELECT oid FROM pg_database WHERE datname = current_database())))
"
        )
    };
}

mod audit;
mod catchup;
mod policies;
pub mod rules;
pub mod scram;
mod sql;

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgPool, Postgres as Pg, Row, Transaction};

use super::{
    valid_ledger_id, AdminGap, Change, Endpoint, Engine, EngineError, Login, LoginInfo, Owner,
    Reconciled, SavedPassword, Stuck,
};
use crate::inventory::{Account, Database, ObjectKind, Objects, Strategy};
use crate::secret::Secret;
use sql::{
    changes_roles_only, decode_ts, fixed_comment, is_privilege_role, is_scoped_of, lit,
    login_comment, login_defaults, owned_scoped_comment, parse_scoped, privilege_role,
    privileges_comment, q, scoped_comment, setting_name, ts_columns, valid_until, DefaultAcl, Obj,
    SAFE_ATTRIBUTES,
};

/// The first server version on which `CREATEROLE` no longer implies power over
/// every role: the admin needs `ADMIN OPTION` on a role to manage it, and
/// membership options (`INHERIT`, `SET`) are per grant.
const PG16: i32 = 160_000;

/// The first server version with `GRANT SET ON PARAMETER`.
const PG15: i32 = 150_000;

/// A PostgreSQL target database.
pub struct Postgres {
    name: String,
    /// The database the admin connects to: privilege roles are per database.
    database: String,
    pool: PgPool,
    /// Options for verify logins: the admin URL's host, port and database.
    base: PgConnectOptions,
    endpoint: Endpoint,
    /// The connection that holds this daemon's presence lock, once taken.
    presence: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
    /// Options of that connection: the admin's, under its own application name.
    presence_opts: PgConnectOptions,
}

/// The advisory-lock key of a ledger's presence: two int4 halves of a hash of
/// the ledger id, under a class of credrotd's own (`objsubid` 2 in `pg_locks`).
fn presence_key(ledger: &str) -> (i32, i32) {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("credrotd presence {ledger}").as_bytes());
    (
        i32::from_be_bytes([h[0], h[1], h[2], h[3]]),
        i32::from_be_bytes([h[4], h[5], h[6], h[7]]),
    )
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
        let database = opts
            .get_database()
            .unwrap_or_else(|| opts.get_username())
            .to_owned();
        let base = opts.clone().application_name("credrotd-verify");
        let presence_opts = opts.clone().application_name("credrotd-presence");
        let pool = PgPoolOptions::new()
            .max_connections(db.max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect_lazy_with(opts);
        Ok(Postgres {
            name: db.name.clone(),
            database,
            pool,
            base,
            endpoint,
            presence: tokio::sync::Mutex::new(None),
            presence_opts,
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

    /// The role's comment and attributes, if it exists. Never panics on a value
    /// from the catalog: `VALID UNTIL 'infinity'` / `'-infinity'`, a NULL or odd
    /// comment.
    async fn role<'e, E>(&self, ex: E, name: &str) -> Result<Option<RoleRow>, EngineError>
    where
        E: Executor<'e, Database = Pg>,
    {
        let action = || format!("look up role {name}");
        let row = sqlx::query(&format!(
            "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls,
                    {}, shobj_description(oid, 'pg_authid') AS comment
             FROM pg_roles WHERE rolname = $1",
            ts_columns("rolvaliduntil", "vu")
        ))
        .bind(name)
        .fetch_optional(ex)
        .await
        .map_err(self.sql(action()))?;
        let Some(r) = row else { return Ok(None) };
        let decode = || -> Result<RoleRow, sqlx::Error> {
            let mut dangerous = Vec::new();
            for (attr, col) in [
                ("SUPERUSER", "rolsuper"),
                ("CREATEDB", "rolcreatedb"),
                ("CREATEROLE", "rolcreaterole"),
                ("REPLICATION", "rolreplication"),
                ("BYPASSRLS", "rolbypassrls"),
            ] {
                if r.try_get::<bool, _>(col)? {
                    dangerous.push(attr);
                }
            }
            Ok(RoleRow {
                can_login: r.try_get("rolcanlogin")?,
                dangerous,
                valid_until: decode_ts(&r, "vu")?,
                comment: r.try_get("comment")?,
            })
        };
        decode().map(Some).map_err(self.sql(action()))
    }

    /// `server_version_num`, e.g. 150004.
    async fn server_version<'e, E>(&self, ex: E) -> Result<i32, EngineError>
    where
        E: Executor<'e, Database = Pg>,
    {
        sqlx::query_scalar("SELECT current_setting('server_version_num')::int4")
            .fetch_one(ex)
            .await
            .map_err(self.sql("read the server version"))
    }

    /// Computes the statements that bring the scoped role to the declared state.
    /// Runs inside `tx` so that apply sees the same catalog it planned against.
    async fn diff(
        &self,
        tx: &mut Transaction<'_, Pg>,
        account: &Account,
    ) -> Result<Plan, EngineError> {
        let role = account.scoped_role();
        let mut plan = Plan::default();
        let existing = self.role(&mut **tx, role).await?;
        match &existing {
            None => {
                plan.must(format!(
                    "CREATE ROLE {} NOLOGIN {SAFE_ATTRIBUTES} INHERIT",
                    q(role)
                ));
                plan.must(format!(
                    "COMMENT ON ROLE {} IS {}",
                    q(role),
                    lit(&scoped_comment(&account.name))
                ));
            }
            Some(r) => {
                // Any owner: which ledger may manage the account is the caller's
                // decision (`owner`, `claim`).
                if !is_scoped_of(r.comment.as_deref(), &account.name) {
                    return Err(EngineError::NotManaged {
                        database: self.name.clone(),
                        role: role.to_owned(),
                    });
                }
                if let Some(attrs) = r.unsafe_attributes(true) {
                    plan.must(format!("ALTER ROLE {} {attrs}", q(role)));
                }
            }
        }

        // Privileges on objects go to the account's privilege role, which every
        // account that declares the same grants shares (sql::privilege_role);
        // the scoped role holds none directly (catch_up revokes what it holds)
        // and is a member of it. A schema or object that no longer exists is
        // reported and skipped, never an error.
        let holder = privilege_role(&self.database, &account.grants);
        let holder_exists = match &holder {
            Some(p) => self.privilege_role_state(tx, p, &mut plan).await?,
            None => false,
        };
        let owners = self.schema_owners(tx, account, &mut plan).await?;
        let desired = self
            .desired_privileges(tx, account, &owners, &mut plan)
            .await?;
        if let Some(p) = &holder {
            let actual = if holder_exists {
                self.actual_privileges(tx, p).await?
            } else {
                BTreeMap::new()
            };
            for (obj, privilege) in desired.iter().filter(|k| !actual.contains_key(*k)) {
                plan.may(
                    format!("GRANT {privilege} ON {} TO {}", obj.sql(), q(p)),
                    None,
                );
            }
        }
        // Undeclared privileges (revoked as their grantor where possible), grant
        // options, column and database privileges, the logins' direct grants,
        // other members: catchup.rs.
        self.catch_up(tx, account, holder.as_deref(), &desired, &mut plan)
            .await?;

        // Default privileges for objects created later ("*" grants), on the
        // privilege role; the scoped role keeps none of its own.
        let mut stmts = Vec::new();
        if let Some(p) = &holder {
            let actual = if holder_exists {
                self.actual_defaults(tx, p).await?
            } else {
                BTreeSet::new()
            };
            let desired = Self::desired_defaults(account, &owners);
            stmts.extend(default_statements(p, &desired, &actual));
        }
        if existing.is_some() {
            let actual = self.actual_defaults(tx, role).await?;
            stmts.extend(default_statements(role, &BTreeSet::new(), &actual));
        }
        // Only a role with the privileges of `for_role` may change its default
        // privileges; known before trying, so a plan says so too.
        let mut allowed: BTreeMap<String, bool> = BTreeMap::new();
        for (for_role, sql) in stmts {
            let ok = match allowed.get(&for_role) {
                Some(ok) => *ok,
                None => {
                    let ok: bool = sqlx::query_scalar("SELECT pg_has_role($1, 'USAGE')")
                        .bind(&for_role)
                        .fetch_one(&mut **tx)
                        .await
                        .map_err(self.sql(format!("check membership in {for_role}")))?;
                    allowed.insert(for_role.clone(), ok);
                    ok
                }
            };
            if ok {
                plan.may(sql, None);
            } else {
                plan.stuck.push(Stuck {
                    what: sql,
                    error: format!("permission denied to change default privileges: the admin does not have the privileges of role {for_role} (objects it creates later are granted at the next rotation)"),
                });
            }
        }

        // Memberships: the declared groups and the privilege role.
        let actual: BTreeSet<String> = if existing.is_some() {
            sqlx::query_scalar(
                "SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
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
        let mut desired: BTreeSet<String> = account.member_of.iter().cloned().collect();
        desired.extend(holder.clone());
        for group in desired.difference(&actual) {
            if Some(group) == holder.as_ref() {
                plan.must(format!("GRANT {} TO {}", q(group), q(role)));
                continue;
            }
            match self.role(&mut **tx, group).await? {
                None => plan.missing(format!(
                    "role {group} (member_of of account {})",
                    account.name
                )),
                Some(g) if !g.dangerous.is_empty() => {
                    return Err(EngineError::Dangerous {
                        database: self.name.clone(),
                        role: group.clone(),
                        attributes: g.dangerous.join(", "),
                    })
                }
                Some(_) => plan.may(format!("GRANT {} TO {}", q(group), q(role)), None),
            }
        }
        for group in actual.difference(&desired) {
            plan.may(format!("REVOKE {} FROM {}", q(group), q(role)), None);
            self.retire_privilege_role(tx, group, role, &mut plan)
                .await?;
        }

        // Row-level security policies of `row_filter` grants.
        self.reconcile_policies(tx, account, &mut plan).await?;

        // Settings (ALTER ROLE ... SET), for row-level security keyed on them.
        let actual = if existing.is_some() {
            self.role_settings(tx, role).await?
        } else {
            Vec::new()
        };
        for (k, v) in &account.settings {
            if !actual.iter().any(|(ak, av)| ak == k && av == v) {
                plan.must(format!(
                    "ALTER ROLE {} SET {} = {}",
                    q(role),
                    setting_name(k),
                    lit(v)
                ));
            }
        }
        for (k, _) in &actual {
            if !account.settings.contains_key(k) {
                plan.must(format!("ALTER ROLE {} RESET {}", q(role), setting_name(k)));
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
                plan.must(format!("GRANT {} TO {}", q(role), q(login)));
            }
        }
        Ok(plan)
    }

    /// Plans, locks what the plan touches, plans again under the locks and
    /// applies. The account's own lock keeps two processes from applying its
    /// change twice; the database-wide lock is taken only when the plan changes
    /// an object's ACL (concurrent `GRANT`s on one object fail with "tuple
    /// concurrently updated"), which after the first rotation of each distinct
    /// grant set is rare: most plans only create a role and join it to its
    /// privilege role. `None` when the locked plan needs the database-wide
    /// lock that `database_wide` did not take (taking it now could deadlock).
    async fn apply(
        &self,
        account: &Account,
        database_wide: bool,
    ) -> Result<Option<Reconciled>, EngineError> {
        let mut tx = self.begin().await?;
        let plan = self.diff(&mut tx, account).await?;
        if plan.stmts.is_empty() {
            tx.rollback().await.map_err(self.sql("end transaction"))?;
            return Ok(Some(Reconciled {
                changes: Vec::new(),
                stuck: plan.stuck,
            }));
        }
        let wide = database_wide || !plan.roles_only();
        let mut keys = vec![lock_key("account", account.scoped_role())];
        if wide {
            keys.push(RECONCILE_LOCK);
        }
        keys.extend(plan.locks.iter().map(|p| lock_key("privileges", p)));
        for key in keys {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(self.sql("take reconcile lock"))?;
        }
        let plan = self.diff(&mut tx, account).await?;
        if !wide && !plan.roles_only() {
            tx.rollback().await.map_err(self.sql("end transaction"))?;
            return Ok(None);
        }
        let action = format!("reconcile role {}", account.name);
        let mut stuck = plan.stuck;
        let mut applied = Vec::new();
        for s in plan.stmts {
            if s.essential {
                self.exec(&mut tx, &s.sql, &action).await?;
                applied.push(s);
                continue;
            }
            // One refused statement (no grant option, not a member of the
            // owner, ...) is undone and reported; the others still apply.
            self.exec(&mut tx, "SAVEPOINT credrotd_reconcile", &action)
                .await?;
            match tx.execute(s.sql.as_str()).await {
                Ok(_) => {
                    self.exec(&mut tx, "RELEASE SAVEPOINT credrotd_reconcile", &action)
                        .await?;
                    applied.push(s);
                }
                Err(sqlx::Error::Database(e)) => {
                    self.exec(&mut tx, "ROLLBACK TO SAVEPOINT credrotd_reconcile", &action)
                        .await?;
                    stuck.push(Stuck {
                        what: s.sql,
                        error: e.message().to_owned(),
                    });
                }
                Err(source) => {
                    return Err(EngineError::Sql {
                        database: self.name.clone(),
                        action,
                        source,
                    })
                }
            }
        }
        // GRANT and REVOKE only warn when they change nothing (a privilege granted
        // by another role, a grant option on some privileges only): what the
        // catalog still wants after applying had no effect.
        let after = self.diff(&mut tx, account).await?;
        let remaining: BTreeSet<&str> = after.stmts.iter().map(|s| s.sql.as_str()).collect();
        let mut changes = Vec::new();
        for s in applied {
            if !s.essential && remaining.contains(s.sql.as_str()) {
                let why = s
                    .hint
                    .unwrap_or_else(|| "the admin may not change it".to_owned());
                stuck.push(Stuck {
                    what: s.sql,
                    error: format!("had no effect: {why}"),
                });
            } else {
                changes.push(Change(s.sql));
            }
        }
        tx.commit().await.map_err(self.sql("commit reconcile"))?;
        Ok(Some(Reconciled { changes, stuck }))
    }

    /// Plans the account's privilege role `p` into existence (or back to safe
    /// attributes) and returns whether it exists already. A role of that name
    /// that is not marked as a privilege role is never touched.
    async fn privilege_role_state(
        &self,
        tx: &mut Transaction<'_, Pg>,
        p: &str,
        plan: &mut Plan,
    ) -> Result<bool, EngineError> {
        plan.locks.insert(p.to_owned());
        match self.role(&mut **tx, p).await? {
            None => {
                plan.must(format!("CREATE ROLE {} NOLOGIN {SAFE_ATTRIBUTES}", q(p)));
                plan.must(format!(
                    "COMMENT ON ROLE {} IS {}",
                    q(p),
                    lit(&privileges_comment(p, &self.database))
                ));
                Ok(false)
            }
            Some(r) if is_privilege_role(r.comment.as_deref()) => {
                if let Some(attrs) = r.unsafe_attributes(true) {
                    plan.must(format!("ALTER ROLE {} {attrs}", q(p)));
                }
                Ok(true)
            }
            Some(_) => Err(EngineError::NotManaged {
                database: self.name.clone(),
                role: p.to_owned(),
            }),
        }
    }

    /// When the scoped role `role` leaves `group` and `group` is a privilege
    /// role that nobody else is a member of and that owns nothing, plans its
    /// removal: its privileges in this database go with `DROP OWNED` (which
    /// needs the admin to have its privileges: the `GRANT` first), then the
    /// role. A privilege role that owns objects (a login made them after `SET
    /// ROLE`) is left alone: dropping it would drop them.
    async fn retire_privilege_role(
        &self,
        tx: &mut Transaction<'_, Pg>,
        group: &str,
        role: &str,
        plan: &mut Plan,
    ) -> Result<(), EngineError> {
        let unused: Option<(Option<String>, bool)> = sqlx::query_as(
            "SELECT shobj_description(g.oid, 'pg_authid'),
                    NOT EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.roleid = g.oid
                                  AND m.member NOT IN (SELECT oid FROM pg_roles
                                                       WHERE rolname IN ($2, current_user)))
                    AND NOT EXISTS (SELECT 1 FROM pg_shdepend d
                                    WHERE d.refclassid = 'pg_authid'::regclass
                                      AND d.refobjid = g.oid AND d.deptype = 'o')
             FROM pg_roles g WHERE g.rolname = $1",
        )
        .bind(group)
        .bind(role)
        .fetch_optional(&mut **tx)
        .await
        .map_err(self.sql(format!("read members of {group}")))?;
        let Some((comment, unused)) = unused else {
            return Ok(());
        };
        if !is_privilege_role(comment.as_deref()) {
            return Ok(());
        }
        plan.locks.insert(group.to_owned());
        if unused {
            let g = q(group);
            plan.may(
                format!("GRANT {g} TO CURRENT_USER; DROP OWNED BY {g}; DROP ROLE {g}"),
                None,
            );
        }
        Ok(())
    }

    /// The owner of every schema the account's grants name; a schema that does
    /// not exist is reported as stuck and left out.
    async fn schema_owners(
        &self,
        tx: &mut Transaction<'_, Pg>,
        account: &Account,
        plan: &mut Plan,
    ) -> Result<BTreeMap<String, String>, EngineError> {
        let mut out = BTreeMap::new();
        let schemas: BTreeSet<&str> = account.grants.iter().map(|g| g.schema.as_str()).collect();
        for schema in schemas {
            let owner: Option<String> = sqlx::query_scalar(
                "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = $1",
            )
            .bind(schema)
            .fetch_optional(&mut **tx)
            .await
            .map_err(self.sql(format!("look up schema {schema}")))?;
            match owner {
                Some(o) => {
                    out.insert(schema.to_owned(), o);
                }
                None => plan.missing(format!(
                    "schema {schema} (granted to account {})",
                    account.name
                )),
            }
        }
        Ok(out)
    }

    /// The objects each grant covers now, by kind: `(schema, name, identity
    /// arguments)` (arguments empty for tables, sequences and schemas). Names the
    /// grant lists that do not exist are reported as stuck and left out; a grant
    /// on a schema that does not exist covers nothing. Objects a scoped role
    /// owns (made by an account's logins) are left out: their owner holds every
    /// privilege, only its own members could grant on them, and the privilege
    /// role is shared by every account that declares the same grants, so what
    /// it is granted must not depend on which of them is reconciled.
    async fn grant_objects(
        &self,
        tx: &mut Transaction<'_, Pg>,
        account: &Account,
        grant: &crate::inventory::Grant,
        owners: &BTreeMap<String, String>,
        plan: &mut Plan,
    ) -> Result<Vec<Obj>, EngineError> {
        let g = grant;
        let scoped = account.scoped_role();
        Ok(match (&g.kind, &g.objects) {
            (ObjectKind::Schema, _) | (_, None) => {
                if owners.get(&g.schema).map(String::as_str) == Some(scoped) {
                    Vec::new()
                } else {
                    vec![Obj::Schema(g.schema.clone())]
                }
            }
            (ObjectKind::Table | ObjectKind::Sequence, Some(sel)) => {
                let kinds = if g.kind == ObjectKind::Table {
                    "rvmfp"
                } else {
                    "S"
                };
                let rows: Vec<(String, bool)> = sqlx::query_as(
                    "SELECT c.relname::text, pg_get_userbyid(c.relowner) = $3
                            OR coalesce(shobj_description(c.relowner, 'pg_authid'), '') LIKE 'credrotd:scoped %'
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND strpos($2, c.relkind::text) > 0 ORDER BY 1",
                )
                .bind(&g.schema)
                .bind(kinds)
                .bind(scoped)
                .fetch_all(&mut **tx)
                .await
                .map_err(self.sql(format!(
                    "list {} in schema {}",
                    g.kind.as_str(),
                    g.schema
                )))?;
                select(
                    sel,
                    rows,
                    |(n, _)| n.clone(),
                    account,
                    g.kind,
                    &g.schema,
                    plan,
                )
                .into_iter()
                .filter(|(_, own)| !own)
                .map(|(n, _)| {
                    if g.kind == ObjectKind::Table {
                        Obj::Table(g.schema.clone(), n)
                    } else {
                        Obj::Sequence(g.schema.clone(), n)
                    }
                })
                .collect()
            }
            (ObjectKind::Function | ObjectKind::Procedure, Some(sel)) => {
                let rows: Vec<(String, String, bool)> = sqlx::query_as(
                    "SELECT p.proname::text, pg_get_function_identity_arguments(p.oid),
                            pg_get_userbyid(p.proowner) = $2
                            OR coalesce(shobj_description(p.proowner, 'pg_authid'), '') LIKE 'credrotd:scoped %'
                     FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE n.nspname = $1 AND p.prokind IN ('f', 'p') ORDER BY 1, 2",
                )
                .bind(&g.schema)
                .bind(scoped)
                .fetch_all(&mut **tx)
                .await
                .map_err(self.sql(format!("list functions in schema {}", g.schema)))?;
                select(
                    sel,
                    rows,
                    |(n, _, _)| n.clone(),
                    account,
                    g.kind,
                    &g.schema,
                    plan,
                )
                .into_iter()
                .filter(|(_, _, own)| !own)
                .map(|(n, args, _)| Obj::Function(g.schema.clone(), n, args))
                .collect()
            }
        })
    }

    async fn desired_privileges(
        &self,
        tx: &mut Transaction<'_, Pg>,
        account: &Account,
        owners: &BTreeMap<String, String>,
        plan: &mut Plan,
    ) -> Result<BTreeSet<(Obj, String)>, EngineError> {
        let mut out = BTreeSet::new();
        for g in &account.grants {
            if !owners.contains_key(&g.schema) {
                continue; // reported by schema_owners
            }
            for obj in self.grant_objects(tx, account, g, owners, plan).await? {
                for p in &g.privileges {
                    out.insert((obj.clone(), (*p).to_owned()));
                }
            }
        }
        Ok(out)
    }

    /// The privileges the role holds directly, each with the roles that granted it.
    async fn actual_privileges(
        &self,
        tx: &mut Transaction<'_, Pg>,
        role: &str,
    ) -> Result<BTreeMap<(Obj, String), BTreeSet<String>>, EngineError> {
        let mut out: BTreeMap<(Obj, String), BTreeSet<String>> = BTreeMap::new();
        let action = || format!("read privileges of {role}");
        let schemas: Vec<(String, String, String)> = sqlx::query_as(concat!(
            acl_mentions!("rolname = $1"),
            "SELECT n.nspname::text, a.privilege_type, pg_get_userbyid(a.grantor)::text
                 FROM pg_namespace n, unnest(n.nspacl) i(item), aclexplode(ARRAY[i.item]) a
                 WHERE n.oid IN (SELECT objid FROM m WHERE classid = 'pg_namespace'::regclass)
                   AND a.grantee IN (SELECT oid FROM r) AND n.nspowner <> a.grantee"
        ))
        .bind(role)
        .fetch_all(&mut **tx)
        .await
        .map_err(self.sql(action()))?;
        for (s, p, by) in schemas {
            out.entry((Obj::Schema(s), p)).or_default().insert(by);
        }
        let rels: Vec<(String, String, String, String, String)> = sqlx::query_as(
            concat!(
                acl_mentions!("rolname = $1"),
                "SELECT n.nspname::text, c.relname::text, c.relkind::text, a.privilege_type,
                        pg_get_userbyid(a.grantor)::text
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, unnest(c.relacl) i(item), aclexplode(ARRAY[i.item]) a
                 WHERE c.oid IN (SELECT objid FROM m WHERE classid = 'pg_class'::regclass AND objsubid = 0)
                   AND a.grantee IN (SELECT oid FROM r) AND c.relowner <> a.grantee"
            ),
        )
        .bind(role)
        .fetch_all(&mut **tx)
        .await
        .map_err(self.sql(action()))?;
        for (s, n, k, p, by) in rels {
            let obj = if k == "S" {
                Obj::Sequence(s, n)
            } else {
                Obj::Table(s, n)
            };
            out.entry((obj, p)).or_default().insert(by);
        }
        let funcs: Vec<(String, String, String, String, String)> = sqlx::query_as(
            concat!(
                acl_mentions!("rolname = $1"),
                "SELECT n.nspname::text, p.proname::text, pg_get_function_identity_arguments(p.oid),
                        a.privilege_type, pg_get_userbyid(a.grantor)::text
                 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace, unnest(p.proacl) i(item), aclexplode(ARRAY[i.item]) a
                 WHERE p.oid IN (SELECT objid FROM m WHERE classid = 'pg_proc'::regclass)
                   AND a.grantee IN (SELECT oid FROM r) AND p.proowner <> a.grantee"
            ),
        )
        .bind(role)
        .fetch_all(&mut **tx)
        .await
        .map_err(self.sql(action()))?;
        for (s, n, args, p, by) in funcs {
            out.entry((Obj::Function(s, n, args), p))
                .or_default()
                .insert(by);
        }
        Ok(out)
    }

    fn desired_defaults(
        account: &Account,
        owners: &BTreeMap<String, String>,
    ) -> BTreeSet<DefaultAcl> {
        let mut out = BTreeSet::new();
        for g in &account.grants {
            if g.objects != Some(Objects::All) {
                continue;
            }
            let Some(owner) = owners.get(&g.schema) else {
                continue;
            };
            let objtype = match g.kind {
                ObjectKind::Table => 'r',
                ObjectKind::Sequence => 'S',
                ObjectKind::Function | ObjectKind::Procedure => 'f',
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
        out
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
        let rows: Vec<Option<Vec<String>>> = sqlx::query_scalar(
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
            .flatten()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect())
    }

    /// `drop_login` without the fallback. Needs no superuser: with only
    /// `CREATEROLE` the admin may drop the role but not touch what it owns, so
    /// `REASSIGN OWNED` / `DROP OWNED` run only when the role owns or holds
    /// something here, after the admin has become a member of the roles
    /// concerned (which `CREATEROLE` allows on 15, `ADMIN OPTION` from 16 on).
    async fn try_drop_login(&self, account: &Account, username: &str) -> Result<(), EngineError> {
        let action = format!("drop login role {username}");
        let mut tx = self.begin().await?;
        if self.role(&mut *tx, username).await?.is_none() {
            tx.commit().await.map_err(self.sql(action))?;
            return Ok(());
        }
        // What depends on the role: objects it owns, privileges granted to or by
        // it, default privileges, policies; here (or shared: databases,
        // tablespaces) and in other databases, where DROP OWNED cannot reach.
        let deps: Vec<(i64, Option<String>, bool, bool)> = sqlx::query_as(
            "SELECT s.dbid::int8, d.datname::text,
                    s.dbid = 0 OR s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()),
                    bool_or(s.deptype = 'o')
             FROM pg_shdepend s LEFT JOIN pg_database d ON d.oid = s.dbid
             WHERE s.refclassid = 'pg_authid'::regclass AND s.deptype <> 'p'
               AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1)
             GROUP BY s.dbid, d.datname ORDER BY 2",
        )
        .bind(username)
        .fetch_all(&mut *tx)
        .await
        .map_err(self.sql(format!("read what depends on {username}")))?;
        let elsewhere: Vec<String> = deps
            .iter()
            .filter(|(_, _, here, _)| !here)
            .map(|(oid, name, _, _)| name.clone().unwrap_or_else(|| format!("oid {oid}")))
            .collect();
        if !elsewhere.is_empty() {
            tx.rollback().await.map_err(self.sql(action))?;
            self.disable_login(username).await?;
            return Err(EngineError::Dependents {
                database: self.name.clone(),
                role: username.to_owned(),
                scoped: account.scoped_role().to_owned(),
                databases: elsewhere,
            });
        }
        let refs_here = !deps.is_empty();
        let owns_here = deps.iter().any(|(_, _, _, owns)| *owns);
        if refs_here {
            let version = self.server_version(&mut *tx).await?;
            self.become_member(&mut tx, username, version, &action)
                .await?;
            if owns_here {
                let scoped = account.scoped_role();
                let granted = self
                    .become_member(&mut tx, scoped, version, &action)
                    .await?;
                self.exec(
                    &mut tx,
                    &format!("REASSIGN OWNED BY {} TO {}", q(username), q(scoped)),
                    &action,
                )
                .await?;
                self.exec(&mut tx, &format!("DROP OWNED BY {}", q(username)), &action)
                    .await?;
                if granted {
                    self.exec(
                        &mut tx,
                        &format!("REVOKE {} FROM CURRENT_USER", q(scoped)),
                        &action,
                    )
                    .await?;
                }
            } else {
                self.exec(&mut tx, &format!("DROP OWNED BY {}", q(username)), &action)
                    .await?;
            }
        }
        // A membership the admin was given in the login goes with the role.
        self.exec(&mut tx, &format!("DROP ROLE {}", q(username)), &action)
            .await?;
        tx.commit().await.map_err(self.sql(action))?;
        Ok(())
    }

    /// Makes the admin (current_user) hold the privileges of `role`, as `REASSIGN
    /// OWNED` and `DROP OWNED` require, by granting it the role unless it already
    /// has them. Returns whether it granted. From PostgreSQL 16 on, the creator
    /// of a role holds it with `ADMIN OPTION` only, and inheritance and `SET` are
    /// options of the grant.
    async fn become_member(
        &self,
        tx: &mut Transaction<'_, Pg>,
        role: &str,
        version: i32,
        action: &str,
    ) -> Result<bool, EngineError> {
        let check = if version >= PG16 {
            "SELECT pg_has_role($1, 'USAGE') AND pg_has_role($1, 'SET')"
        } else {
            "SELECT pg_has_role($1, 'USAGE')"
        };
        let has: bool = sqlx::query_scalar(check)
            .bind(role)
            .fetch_one(&mut **tx)
            .await
            .map_err(self.sql(action))?;
        if has {
            return Ok(false);
        }
        let options = if version >= PG16 {
            " WITH INHERIT TRUE, SET TRUE"
        } else {
            ""
        };
        self.exec(
            tx,
            &format!("GRANT {} TO CURRENT_USER{options}", q(role)),
            action,
        )
        .await?;
        Ok(true)
    }

    /// The body of `check_admin`, in a read-only transaction.
    async fn admin_gaps(
        &self,
        tx: &mut Transaction<'_, Pg>,
        accounts: &[&Account],
    ) -> Result<Vec<AdminGap>, EngineError> {
        let (admin, superuser, createrole, inherit, version, signal): (
            String,
            bool,
            bool,
            bool,
            i32,
            bool,
        ) = sqlx::query_as(
            "SELECT current_user::text, rolsuper, rolcreaterole, rolinherit,
                    current_setting('server_version_num')::int4,
                    pg_has_role('pg_signal_backend', 'USAGE')
             FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&mut **tx)
        .await
        .map_err(self.sql("read the admin's attributes"))?;
        if superuser {
            return Ok(Vec::new());
        }
        let mut gaps = Gaps::default();
        let a = q(&admin);
        let pg16 = version >= PG16;
        if !createrole {
            gaps.add(
                format!("{admin} lacks CREATEROLE: it cannot create, alter or drop the scoped and login roles"),
                Some(format!("ALTER ROLE {a} CREATEROLE")),
            );
        }
        if !pg16 && !inherit {
            gaps.add(
                format!("{admin} is NOINHERIT: it does not get the privileges of the roles it is a member of (schema owners, for default privileges; logins, to hand over what they own)"),
                Some(format!("ALTER ROLE {a} INHERIT")),
            );
        }
        if !signal && accounts.iter().any(|acc| acc.revoke.terminate_sessions) {
            gaps.add(
                format!("{admin} is not a member of pg_signal_backend: sessions of revoked logins cannot be ended"),
                Some(format!("GRANT pg_signal_backend TO {a}")),
            );
        }
        for account in accounts {
            self.account_gaps(tx, account, &admin, version, &mut gaps)
                .await?;
        }
        Ok(gaps.0)
    }

    async fn account_gaps(
        &self,
        tx: &mut Transaction<'_, Pg>,
        account: &Account,
        admin: &str,
        version: i32,
        gaps: &mut Gaps,
    ) -> Result<(), EngineError> {
        let a = q(admin);
        let pg16 = version >= PG16;
        let action = || format!("check the admin's privileges for account {}", account.name);

        // Settings: anyone may set a parameter of context `user` on a role it
        // manages; a placeholder (`app.tenant_id`) or a superuser parameter needs
        // a superuser, or from 15 on `GRANT SET ON PARAMETER`.
        for k in account.settings.keys() {
            let context: Option<String> =
                sqlx::query_scalar("SELECT context FROM pg_settings WHERE name = lower($1)")
                    .bind(k)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(self.sql(action()))?;
            if context.as_deref() == Some("user") {
                continue;
            }
            let granted: bool = if version >= PG15 {
                sqlx::query_scalar("SELECT has_parameter_privilege($1, 'SET')")
                    .bind(k)
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(self.sql(action()))?
            } else {
                false
            };
            if !granted {
                gaps.add(
                    format!(
                        "{admin} may not set parameter {k} (a setting of account {}): it needs SET on it",
                        account.name
                    ),
                    (version >= PG15)
                        .then(|| format!("GRANT SET ON PARAMETER {} TO {a}", setting_name(k))),
                );
            }
        }

        // The roles the admin must alter, grant or drop.
        let mut roles = vec![(
            account.scoped_role().to_owned(),
            "the scoped role".to_owned(),
        )];
        match &account.strategy {
            Strategy::Alternating => {
                for suffix in ["a", "b"] {
                    roles.push((
                        format!("{}_{suffix}", account.name),
                        "the login role".to_owned(),
                    ));
                }
            }
            Strategy::Static { role, .. } => roles.push((role.clone(), "the static role".into())),
            Strategy::Ephemeral => {
                let logins: Vec<String> = sqlx::query_scalar(
                    "SELECT r.rolname::text FROM pg_shdescription d JOIN pg_roles r ON r.oid = d.objoid
                     WHERE d.classoid = 'pg_authid'::regclass AND d.description = $1 ORDER BY 1",
                )
                .bind(login_comment(&account.name))
                .fetch_all(&mut **tx)
                .await
                .map_err(self.sql(action()))?;
                roles.extend(logins.into_iter().map(|l| (l, "the login role".into())));
            }
        }
        for (role, what) in roles {
            let row: Option<(bool, bool, bool, bool)> = sqlx::query_as(
                "SELECT rolsuper, rolreplication, rolbypassrls,
                        pg_has_role(rolname, 'MEMBER WITH ADMIN OPTION')
                 FROM pg_roles WHERE rolname = $1",
            )
            .bind(&role)
            .fetch_optional(&mut **tx)
            .await
            .map_err(self.sql(action()))?;
            let Some((sup, repl, bypass, admin_option)) = row else {
                continue;
            };
            let attrs: Vec<&str> = [
                ("SUPERUSER", sup),
                ("REPLICATION", repl),
                ("BYPASSRLS", bypass),
            ]
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| n)
            .collect();
            if !attrs.is_empty() {
                gaps.add(
                    format!(
                        "{admin} cannot alter {what} {role} of account {}: it has {} (only a superuser may change such a role)",
                        account.name,
                        attrs.join(", ")
                    ),
                    None,
                );
            } else if pg16 && !admin_option {
                gaps.add(
                    format!(
                        "{admin} cannot manage {what} {role} of account {}: no ADMIN OPTION on it (PostgreSQL 16+: a CREATEROLE admin manages only the roles it created or holds with ADMIN OPTION)",
                        account.name
                    ),
                    Some(format!("GRANT {} TO {a} WITH ADMIN OPTION", q(&role))),
                );
            }
        }

        // pg_authid is a superuser's: the old verifier of a static role cannot be
        // saved, so a static rotation that fails after setting the password
        // cannot put the old one back (the next rotation sets a fresh one).
        if let Strategy::Static { role, .. } = &account.strategy {
            gaps.add(
                format!(
                    "{admin} cannot read pg_authid (superuser only): if a rotation of static account {} fails after setting the password of {role}, the previous password cannot be put back",
                    account.name
                ),
                None,
            );
        }

        // Memberships to hand out: CREATEROLE suffices before 16.
        if pg16 {
            for group in &account.member_of {
                let admin_option: Option<bool> = sqlx::query_scalar(
                    "SELECT pg_has_role(rolname, 'MEMBER WITH ADMIN OPTION') FROM pg_roles WHERE rolname = $1",
                )
                .bind(group)
                .fetch_optional(&mut **tx)
                .await
                .map_err(self.sql(action()))?;
                if admin_option == Some(false) {
                    gaps.add(
                        format!(
                            "member_of role {group} of account {}: {admin} needs ADMIN OPTION on it to grant it (PostgreSQL 16+)",
                            account.name
                        ),
                        Some(format!("GRANT {} TO {a} WITH ADMIN OPTION", q(group))),
                    );
                }
            }
        }

        // Privileges to hand out: each needs the grant option (or ownership).
        for g in &account.grants {
            let owner: Option<(String, bool, bool)> = sqlx::query_as(
                "SELECT r.rolname::text, r.rolsuper, pg_has_role(r.oid, 'USAGE')
                 FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE n.nspname = $1",
            )
            .bind(&g.schema)
            .fetch_optional(&mut **tx)
            .await
            .map_err(self.sql(action()))?;
            let Some((owner, owner_super, owner_privs)) = owner else {
                continue; // reconcile reports the missing schema
            };
            for p in &g.privileges {
                self.grant_option_gaps(tx, account, g, p, admin, gaps)
                    .await?;
            }
            if g.objects == Some(Objects::All) && g.kind != ObjectKind::Schema && !owner_privs {
                let later = format!(
                    "{} created there later are granted only at the next rotation",
                    g.kind.as_str()
                );
                if owner_super {
                    gaps.add(
                        format!(
                            "{admin} cannot set default privileges for role {owner} in schema {}: {later} ({owner} is a superuser; let a non-superuser role own the schema and create its objects)",
                            g.schema
                        ),
                        None,
                    );
                } else {
                    let options = if pg16 { " WITH INHERIT TRUE" } else { "" };
                    gaps.add(
                        format!(
                            "{admin} cannot set default privileges for role {owner} in schema {}: {later}",
                            g.schema
                        ),
                        Some(format!("GRANT {} TO {a}{options}", q(&owner))),
                    );
                }
            }
        }
        Ok(())
    }

    /// The objects of grant `g` on which the admin cannot grant `privilege`.
    async fn grant_option_gaps(
        &self,
        tx: &mut Transaction<'_, Pg>,
        account: &Account,
        g: &crate::inventory::Grant,
        privilege: &str,
        admin: &str,
        gaps: &mut Gaps,
    ) -> Result<(), EngineError> {
        let a = q(admin);
        let with = format!("{privilege} WITH GRANT OPTION");
        let action = || format!("check the admin's privileges for account {}", account.name);
        let lacking: Vec<Obj> = match (&g.kind, &g.objects) {
            (ObjectKind::Schema, _) | (_, None) => {
                let ok: bool = sqlx::query_scalar(
                    "SELECT pg_get_userbyid(nspowner) = $3 OR has_schema_privilege(oid, $2)
                     FROM pg_namespace WHERE nspname = $1",
                )
                .bind(&g.schema)
                .bind(&with)
                .bind(account.scoped_role())
                .fetch_one(&mut **tx)
                .await
                .map_err(self.sql(action()))?;
                if ok {
                    Vec::new()
                } else {
                    vec![Obj::Schema(g.schema.clone())]
                }
            }
            (ObjectKind::Table | ObjectKind::Sequence, Some(sel)) => {
                let (kinds, check) = if g.kind == ObjectKind::Table {
                    ("rvmfp", "has_table_privilege")
                } else {
                    ("S", "has_sequence_privilege")
                };
                let names: Vec<String> = sqlx::query_scalar(&format!(
                    "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND pg_get_userbyid(c.relowner) <> $4
                       AND CASE WHEN strpos($2, c.relkind::text) > 0 THEN NOT {check}(c.oid, $3) END
                     ORDER BY 1"
                ))
                .bind(&g.schema)
                .bind(kinds)
                .bind(&with)
                .bind(account.scoped_role())
                .fetch_all(&mut **tx)
                .await
                .map_err(self.sql(action()))?;
                names
                    .into_iter()
                    .filter(|n| covers(sel, n))
                    .map(|n| {
                        if g.kind == ObjectKind::Table {
                            Obj::Table(g.schema.clone(), n)
                        } else {
                            Obj::Sequence(g.schema.clone(), n)
                        }
                    })
                    .collect()
            }
            (ObjectKind::Function | ObjectKind::Procedure, Some(sel)) => {
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT p.proname::text, pg_get_function_identity_arguments(p.oid)
                     FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE n.nspname = $1 AND p.prokind IN ('f', 'p') AND pg_get_userbyid(p.proowner) <> $3
                       AND NOT has_function_privilege(p.oid, $2)
                     ORDER BY 1, 2",
                )
                .bind(&g.schema)
                .bind(&with)
                .bind(account.scoped_role())
                .fetch_all(&mut **tx)
                .await
                .map_err(self.sql(action()))?;
                rows.into_iter()
                    .filter(|(n, _)| covers(sel, n))
                    .map(|(n, args)| Obj::Function(g.schema.clone(), n, args))
                    .collect()
            }
        };
        if lacking.len() > 1 && g.objects == Some(Objects::All) {
            let all = match g.kind {
                ObjectKind::Sequence => "SEQUENCES",
                ObjectKind::Function | ObjectKind::Procedure => "ROUTINES",
                _ => "TABLES",
            };
            let mut names: Vec<String> = lacking.iter().take(3).map(Obj::describe).collect();
            if lacking.len() > 3 {
                names.push("...".into());
            }
            gaps.add(
                format!(
                    "{admin} cannot grant {privilege} on {} {} in schema {} ({}) (no grant option)",
                    lacking.len(),
                    g.kind.as_str(),
                    g.schema,
                    names.join(", ")
                ),
                Some(format!(
                    "GRANT {privilege} ON ALL {all} IN SCHEMA {} TO {a} WITH GRANT OPTION",
                    q(&g.schema)
                )),
            );
        } else {
            for obj in lacking {
                gaps.add(
                    format!(
                        "{admin} cannot grant {privilege} on {} (no grant option)",
                        obj.describe()
                    ),
                    Some(format!(
                        "GRANT {privilege} ON {} TO {a} WITH GRANT OPTION",
                        obj.sql()
                    )),
                );
            }
        }
        Ok(())
    }
}

/// Whether the selection names `name` (or everything).
/// The statements that bring `grantee`'s default privileges from `actual` to
/// `desired`, each with the role whose defaults it changes.
fn default_statements(
    grantee: &str,
    desired: &BTreeSet<DefaultAcl>,
    actual: &BTreeSet<DefaultAcl>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for d in desired.difference(actual) {
        out.push((
            d.for_role.clone(),
            format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT {} ON {} TO {}",
                q(&d.for_role),
                q(&d.schema),
                d.privilege,
                d.kind_sql(),
                q(grantee)
            ),
        ));
    }
    for d in actual.difference(desired) {
        let schema = if d.schema.is_empty() {
            String::new()
        } else {
            format!(" IN SCHEMA {}", q(&d.schema))
        };
        out.push((
            d.for_role.clone(),
            format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {}{schema} REVOKE {} ON {} FROM {}",
                q(&d.for_role),
                d.privilege,
                d.kind_sql(),
                q(grantee)
            ),
        ));
    }
    out
}

fn covers(sel: &Objects, name: &str) -> bool {
    match sel {
        Objects::All => true,
        Objects::Named(names) => names.iter().any(|n| n == name),
    }
}

/// The rows `sel` picks. A listed name that does not exist is reported as stuck.
fn select<T: Clone>(
    sel: &Objects,
    rows: Vec<T>,
    name: impl Fn(&T) -> String,
    account: &Account,
    kind: ObjectKind,
    schema: &str,
    plan: &mut Plan,
) -> Vec<T> {
    match sel {
        Objects::All => rows,
        Objects::Named(names) => {
            let mut out = Vec::new();
            for n in names {
                let found: Vec<T> = rows.iter().filter(|r| name(r) == *n).cloned().collect();
                if found.is_empty() {
                    plan.missing(format!(
                        "{} {schema}.{n} (granted to account {})",
                        kind.as_str().trim_end_matches('s'),
                        account.name
                    ));
                }
                out.extend(found);
            }
            out
        }
    }
}

struct RoleRow {
    can_login: bool,
    dangerous: Vec<&'static str>,
    valid_until: Option<DateTime<Utc>>,
    comment: Option<String>,
}

impl RoleRow {
    /// The attributes that turn off what must be off (`LOGIN` too when
    /// `nologin`), or `None` when all is well. Only what is on is named:
    /// PostgreSQL refuses a non-superuser an `ALTER ROLE` that merely mentions
    /// `NOSUPERUSER`, `NOREPLICATION` or `NOBYPASSRLS`, even when nothing changes.
    fn unsafe_attributes(&self, nologin: bool) -> Option<String> {
        let mut out: Vec<String> = Vec::new();
        if nologin && self.can_login {
            out.push("NOLOGIN".into());
        }
        out.extend(self.dangerous.iter().map(|a| format!("NO{a}")));
        (!out.is_empty()).then(|| out.join(" "))
    }
}

/// What reconciliation is about to run, and what it already knows it cannot.
#[derive(Default)]
struct Plan {
    stmts: Vec<Stmt>,
    stuck: Vec<Stuck>,
    /// The privilege roles the plan creates, joins or leaves: applying it
    /// holds each one's lock, so that one account never joins a privilege role
    /// another is dropping.
    locks: BTreeSet<String>,
}

struct Stmt {
    sql: String,
    /// Without it the scoped role is unusable or unsafe: a failure fails the
    /// reconciliation. Otherwise the statement runs under a savepoint and a
    /// failure is reported as stuck.
    essential: bool,
    /// Why the statement may have no effect, for the stuck report.
    hint: Option<String>,
}

impl Plan {
    fn must(&mut self, sql: String) {
        self.stmts.push(Stmt {
            sql,
            essential: true,
            hint: None,
        });
    }

    fn may(&mut self, sql: String, hint: Option<String>) {
        self.stmts.push(Stmt {
            sql,
            essential: false,
            hint,
        });
    }

    /// Whether every statement changes roles only, no object's ACL.
    fn roles_only(&self) -> bool {
        self.stmts.iter().all(|s| changes_roles_only(&s.sql))
    }

    fn missing(&mut self, what: String) {
        if !self.stuck.iter().any(|s| s.what == what) {
            self.stuck.push(Stuck {
                what,
                error: "does not exist".into(),
            });
        }
    }
}

/// Admin gaps in the order found, each once.
#[derive(Default)]
struct Gaps(Vec<AdminGap>);

impl Gaps {
    fn add(&mut self, missing: String, fix: Option<String>) {
        if !self.0.iter().any(|g| g.missing == missing) {
            self.0.push(AdminGap { missing, fix });
        }
    }
}

/// Serializes changes to object ACLs in one database: concurrent GRANTs on one
/// object can fail with "tuple concurrently updated".
const RECONCILE_LOCK: i64 = 0x6372_6564_726f_7401;

/// The advisory-lock key (one int8) of an account's scoped role or of a
/// privilege role, by name.
fn lock_key(what: &str, name: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("credrotd {what} {name}").as_bytes());
    i64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
}

#[async_trait]
impl Engine for Postgres {
    async fn reconcile(&self, account: &Account, apply: bool) -> Result<Reconciled, EngineError> {
        if !apply {
            let mut tx = self.begin().await?;
            self.exec(
                &mut tx,
                "SET TRANSACTION READ ONLY",
                "start read-only transaction",
            )
            .await?;
            let plan = self.diff(&mut tx, account).await?;
            tx.rollback().await.map_err(self.sql("end transaction"))?;
            return Ok(Reconciled {
                changes: plan.stmts.into_iter().map(|s| Change(s.sql)).collect(),
                stuck: plan.stuck,
            });
        }
        let mut database_wide = false;
        loop {
            if let Some(done) = self.apply(account, database_wide).await? {
                return Ok(done);
            }
            // The catalog moved between the unlocked plan and the locked one,
            // which now changes an object's ACL: again, under the wider lock.
            database_wide = true;
        }
    }

    async fn create_login(&self, account: &Account, login: &Login<'_>) -> Result<(), EngineError> {
        let verifier = scram::verifier(login.password.expose().as_bytes());
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
        for s in login_defaults(account, login.username) {
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
                if let Some(attrs) = r.unsafe_attributes(false) {
                    self.exec(
                        &mut tx,
                        &format!("ALTER ROLE {} {attrs}", q(username)),
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
        let verifier = scram::verifier(login.password.expose().as_bytes());
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
            // A fixed login keeps its settings from turn to turn: what the
            // inventory no longer sets (or someone added) goes first.
            for (k, _) in self.role_settings(&mut tx, login.username).await? {
                if k != "role" && !account.settings.contains_key(&k) {
                    self.exec(
                        &mut tx,
                        &format!(
                            "ALTER ROLE {} RESET {}",
                            q(login.username),
                            setting_name(&k)
                        ),
                        &action,
                    )
                    .await?;
                }
            }
            for s in login_defaults(account, login.username) {
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
        let action = format!("disable login {username}");
        let mut tx = self.begin().await?;
        if let Some(r) = self.role(&mut *tx, username).await? {
            // The server's clock decides expiry, so take its time, not ours.
            let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
                .fetch_one(&mut *tx)
                .await
                .map_err(self.sql(action.clone()))?;
            let expired = r.valid_until.is_some_and(|v| v <= now);
            if r.can_login || !expired {
                let mut stmt = format!("ALTER ROLE {} NOLOGIN", q(username));
                if !expired {
                    stmt.push_str(&format!(" VALID UNTIL {}", valid_until(now)));
                }
                self.exec(&mut tx, &stmt, &action).await?;
            }
        }
        tx.commit().await.map_err(self.sql(action))?;
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
        .map_err(|source| {
            let denied = matches!(&source, sqlx::Error::Database(e) if e.code().as_deref() == Some("42501"));
            EngineError::Sql {
                database: self.name.clone(),
                action: if denied {
                    format!("terminate sessions of {username} (the admin needs membership in pg_signal_backend)")
                } else {
                    format!("terminate sessions of {username}")
                },
                source,
            }
        })?;
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
        match self.try_drop_login(account, username).await {
            Ok(()) => Ok(()),
            Err(e @ EngineError::Dependents { .. }) => Err(e),
            Err(e) => {
                // A login that cannot be dropped at least refuses logins and is
                // expired; the error that matters is the drop's.
                if let Err(d) = self.disable_login(username).await {
                    tracing::warn!(database = %self.name, username, error = %d, "cannot disable a login that could not be dropped");
                }
                Err(e)
            }
        }
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
        let action = || format!("read the password verifier of {role}");
        let row = sqlx::query(&format!(
            "SELECT rolpassword, {} FROM pg_authid WHERE rolname = $1",
            ts_columns("rolvaliduntil", "vu")
        ))
        .bind(role)
        .fetch_optional(&self.pool)
        .await;
        let row = match row {
            Ok(Some(row)) => row,
            Ok(None) => return Ok(None),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {
                return Ok(None)
            }
            Err(source) => {
                return Err(EngineError::Sql {
                    database: self.name.clone(),
                    action: action(),
                    source,
                })
            }
        };
        let verifier: Option<String> = row.try_get("rolpassword").map_err(self.sql(action()))?;
        let valid_until = decode_ts(&row, "vu").map_err(self.sql(action()))?;
        Ok(verifier.map(|v| SavedPassword {
            verifier: Secret::new(v),
            valid_until,
        }))
    }

    async fn restore_password(&self, role: &str, saved: &SavedPassword) -> Result<(), EngineError> {
        // None is "never expires": no VALID UNTIL, or 'infinity', which is also
        // how "never" is written back. MIN_UTC becomes '-infinity' again.
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

    async fn hold_presence(&self, ledger: &str) -> Result<(), EngineError> {
        let mut held = self.presence.lock().await;
        if let Some(conn) = held.as_mut() {
            if sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok() {
                return Ok(());
            }
            *held = None;
        }
        let (k1, k2) = presence_key(ledger);
        let connect = tokio::time::timeout(Duration::from_secs(15), self.presence_opts.connect());
        let mut conn = connect
            .await
            .map_err(|_| EngineError::Sql {
                database: self.name.clone(),
                action: "connect for the presence lock".into(),
                source: sqlx::Error::PoolTimedOut,
            })?
            .map_err(self.sql("connect for the presence lock"))?;
        // Non-blocking: another process of the same ledger (a `credrotd rotate`
        // beside the daemon) may hold it already, which says the same thing.
        sqlx::query("SELECT pg_try_advisory_lock($1, $2)")
            .bind(k1)
            .bind(k2)
            .execute(&mut conn)
            .await
            .map_err(self.sql("take the presence lock"))?;
        *held = Some(conn);
        Ok(())
    }

    async fn presence(&self, ledger: &str) -> Result<bool, EngineError> {
        let (k1, k2) = presence_key(ledger);
        // Advisory locks on two int4 keys show as classid/objid with objsubid 2.
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database
             WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()
               AND l.classid::bigint = ($1::int4::bigint & 4294967295)
               AND l.objid::bigint = ($2::int4::bigint & 4294967295) AND l.objsubid = 2)",
        )
        .bind(k1)
        .bind(k2)
        .fetch_one(&self.pool)
        .await
        .map_err(self.sql("look for another daemon's presence lock"))
    }

    async fn owner(&self, account: &Account) -> Result<Option<Owner>, EngineError> {
        let role = account.scoped_role();
        let Some(r) = self.role(&self.pool, role).await? else {
            return Ok(None);
        };
        match r.comment.as_deref().and_then(parse_scoped) {
            Some(m) if m.account == account.name => Ok(Some(m.owner)),
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
                what: "a ledger id must be 1 to 64 of a-z, 0-9 and -".into(),
            });
        }
        let role = account.scoped_role();
        let action = format!("claim role {role}");
        let mut tx = self.begin().await?;
        // The account's reconcile lock: a claim never interleaves with a
        // reconciliation of the account, which reads the marker.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock_key("account", role))
            .execute(&mut *tx)
            .await
            .map_err(self.sql(action.clone()))?;
        match self.role(&mut *tx, role).await? {
            None => {
                return Err(EngineError::Missing {
                    database: self.name.clone(),
                    what: format!("role {role} (the scoped role of account {})", account.name),
                })
            }
            Some(r) if !is_scoped_of(r.comment.as_deref(), &account.name) => {
                return Err(EngineError::NotManaged {
                    database: self.name.clone(),
                    role: role.to_owned(),
                })
            }
            Some(_) => {}
        }
        self.exec(
            &mut tx,
            &format!(
                "COMMENT ON ROLE {} IS {}",
                q(role),
                lit(&owned_scoped_comment(&account.name, ledger, now))
            ),
            &action,
        )
        .await?;
        tx.commit().await.map_err(self.sql(action))?;
        Ok(())
    }

    async fn sessions(&self) -> Result<Vec<String>, EngineError> {
        self.read_sessions().await
    }

    async fn catalog(&self) -> Result<super::catalog::Catalog, EngineError> {
        self.read_catalog().await
    }

    async fn check_admin(&self, accounts: &[&Account]) -> Result<Vec<AdminGap>, EngineError> {
        let mut tx = self.begin().await?;
        self.exec(
            &mut tx,
            "SET TRANSACTION READ ONLY",
            "start read-only transaction",
        )
        .await?;
        let gaps = self.admin_gaps(&mut tx, accounts).await?;
        tx.rollback().await.map_err(self.sql("end transaction"))?;
        Ok(gaps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where a connection goes and its TLS settings, as sqlx writes them back
    /// (a certificate path as `file: <path>`).
    fn route(o: &PgConnectOptions) -> String {
        let url = o.to_url_lossy();
        let tls: Vec<String> = url
            .query_pairs()
            .filter(|(k, _)| k.starts_with("ssl"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "{}:{} {:?} {:?} {:?} {}",
            o.get_host(),
            o.get_port(),
            o.get_socket(),
            o.get_database(),
            o.get_ssl_mode(),
            tls.join("&")
        )
    }

    /// A verify login goes where the admin connection goes, with its TLS
    /// settings: a man in the middle must not get a new password over a
    /// weaker connection than the admin's.
    #[tokio::test]
    async fn verify_logins_use_the_admin_connections_host_and_tls_settings() {
        let db = Database {
            name: "orders".into(),
            engine: crate::inventory::EngineKind::Postgres,
            url: "postgres://admin@db1.internal:6432/orders?sslmode=verify-full\
                  &sslrootcert=/etc/credrotd/ca.pem&sslcert=/etc/credrotd/c.pem&sslkey=/etc/credrotd/k.pem"
                .into(),
            password: crate::inventory::PasswordSource::None,
            publish_host: None,
            publish_port: None,
            publish_dbname: None,
            max_connections: 1,
            hosts: Vec::new(),
        };
        let pg = Postgres::new(&db).unwrap();
        let admin = route(&pg.pool.connect_options());
        assert_eq!(
            admin,
            "db1.internal:6432 None Some(\"orders\") VerifyFull sslmode=verify-full\
             &sslrootcert=file: /etc/credrotd/ca.pem&sslcert=file: /etc/credrotd/c.pem&sslkey=file: /etc/credrotd/k.pem"
        );
        let verify = pg.base.clone().username("orders_x").password("p");
        assert_eq!(route(&verify), admin);
        assert_eq!(route(&pg.presence_opts), admin);
    }

    #[test]
    fn only_attributes_that_are_on_are_turned_off() {
        let r = RoleRow {
            can_login: true,
            dangerous: vec!["CREATEDB"],
            valid_until: None,
            comment: None,
        };
        assert_eq!(
            r.unsafe_attributes(true).as_deref(),
            Some("NOLOGIN NOCREATEDB")
        );
        assert_eq!(r.unsafe_attributes(false).as_deref(), Some("NOCREATEDB"));
        let ok = RoleRow {
            can_login: false,
            dangerous: vec![],
            valid_until: None,
            comment: None,
        };
        assert_eq!(ok.unsafe_attributes(true), None);
    }
}
