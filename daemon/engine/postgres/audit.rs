//! Reads every role, membership and privilege of a PostgreSQL database into a
//! [`Catalog`] for `audit` and `who-can`, in one read-only snapshot. Every
//! ACL is read with `acldefault()` filling in a NULL one, so an owner's rights
//! and PUBLIC's defaults are there as the server applies them.

use sqlx::{Postgres as Pg, Row, Transaction};

use super::rules::DANGEROUS_MEMBERSHIPS;
use super::sql::q;
use super::{decode_ts, is_privilege_role, parse_scoped, ts_columns, Postgres};
use crate::engine::catalog::{
    Attribute, Catalog, CatalogRole, Managed, ManagedKind, Membership, Object, Privilege,
};
use crate::engine::EngineError;

/// Schemas that are the server's, not the application's.
const SYSTEM_SCHEMAS: &str =
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'";

fn grantee_sql(expr: &str) -> String {
    format!("CASE WHEN {expr} = 0 THEN 'PUBLIC' ELSE pg_get_userbyid({expr})::text END")
}

fn role_sql(name: &str) -> String {
    if name == "PUBLIC" {
        "PUBLIC".to_owned()
    } else {
        q(name)
    }
}

fn managed(comment: Option<&str>) -> Option<Managed> {
    let comment = comment?;
    if let Some(m) = parse_scoped(comment) {
        return Some(Managed {
            kind: ManagedKind::Scoped,
            account: m.account,
            owner: m.owner.ledger,
        });
    }
    if is_privilege_role(Some(comment)) {
        return Some(Managed {
            kind: ManagedKind::Privileges,
            account: String::new(),
            owner: None,
        });
    }
    let (kind, account) = if let Some(a) = comment.strip_prefix("credrotd:login account=") {
        (ManagedKind::Login, a)
    } else if let Some(a) = comment.strip_prefix("credrotd:alternating account=") {
        (ManagedKind::Alternating, a)
    } else {
        return None;
    };
    let valid = !account.is_empty()
        && account
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    valid.then(|| Managed {
        kind,
        account: account.to_owned(),
        owner: None,
    })
}

impl Postgres {
    /// Roles with a session anywhere on the server (`pg_stat_activity` shows
    /// every session's role to every role).
    pub(super) async fn read_sessions(&self) -> Result<Vec<String>, EngineError> {
        sqlx::query_scalar(
            "SELECT DISTINCT usename::text FROM pg_stat_activity
             WHERE usename IS NOT NULL AND pid <> pg_backend_pid()",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("read the sessions"))
    }

    pub(super) async fn read_catalog(&self) -> Result<Catalog, EngineError> {
        let mut tx = self.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(self.sql("start a read-only snapshot"))?;
        let (server, admin, now, version): (String, String, chrono::DateTime<chrono::Utc>, i32) =
            sqlx::query_as(
                "SELECT 'PostgreSQL ' || current_setting('server_version'), current_user::text, now(),
                        current_setting('server_version_num')::int4",
            )
            .fetch_one(&mut *tx)
            .await
            .map_err(self.sql("read the server version"))?;
        let mut catalog = Catalog {
            server,
            admin,
            now,
            plan_covers_grants: true,
            ..Catalog::default()
        };
        self.catalog_roles(&mut tx, &mut catalog).await?;
        self.catalog_memberships(&mut tx, &mut catalog, version)
            .await?;
        self.catalog_privileges(&mut tx, &mut catalog).await?;
        tx.rollback()
            .await
            .map_err(self.sql("end the read-only snapshot"))?;
        Ok(catalog)
    }

    async fn catalog_roles(
        &self,
        tx: &mut Transaction<'_, Pg>,
        catalog: &mut Catalog,
    ) -> Result<(), EngineError> {
        let rows = sqlx::query(&format!(
            "SELECT r.rolname::text AS name, r.rolcanlogin AS login, {},
                    r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls,
                    r.oid = 10 AS bootstrap, shobj_description(r.oid, 'pg_authid') AS comment,
                    ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                          WHERE m.member = r.oid AND g.rolname = ANY($1)) AS powerful
             FROM pg_roles r WHERE r.rolname !~ '^pg_' ORDER BY r.rolname",
            ts_columns("r.rolvaliduntil", "vu")
        ))
        .bind(DANGEROUS_MEMBERSHIPS)
        .fetch_all(&mut **tx)
        .await
        .map_err(self.sql("read roles"))?;
        for row in rows {
            let decode = || -> Result<CatalogRole, sqlx::Error> {
                let name: String = row.try_get("name")?;
                let mut dangerous = Vec::new();
                for (column, attribute) in [
                    ("rolsuper", "SUPERUSER"),
                    ("rolcreaterole", "CREATEROLE"),
                    ("rolcreatedb", "CREATEDB"),
                    ("rolreplication", "REPLICATION"),
                    ("rolbypassrls", "BYPASSRLS"),
                ] {
                    if row.try_get::<bool, _>(column)? {
                        dangerous.push(Attribute {
                            name: attribute.to_owned(),
                            fix: format!("ALTER ROLE {} NO{attribute}", q(&name)),
                        });
                    }
                }
                for group in row.try_get::<Vec<String>, _>("powerful")? {
                    dangerous.push(Attribute {
                        name: format!("membership in {group}"),
                        fix: format!("REVOKE {} FROM {}", q(&group), q(&name)),
                    });
                }
                let comment: Option<String> = row.try_get("comment")?;
                Ok(CatalogRole {
                    can_login: row.try_get("login")?,
                    valid_until: decode_ts(&row, "vu")?,
                    managed: managed(comment.as_deref()),
                    dangerous,
                    bootstrap: row.try_get("bootstrap")?,
                    drop_sql: format!("DROP ROLE {}", q(&name)),
                    name,
                })
            };
            catalog
                .roles
                .push(decode().map_err(self.sql("read roles"))?);
        }
        Ok(())
    }

    /// Memberships through which privileges are inherited (PostgreSQL 16: the
    /// grant's INHERIT option; before: the member's INHERIT attribute).
    async fn catalog_memberships(
        &self,
        tx: &mut Transaction<'_, Pg>,
        catalog: &mut Catalog,
        version: i32,
    ) -> Result<(), EngineError> {
        let inherit = if version >= super::PG16 {
            "m.inherit_option"
        } else {
            "u.rolinherit"
        };
        let rows: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT g.rolname::text, u.rolname::text FROM pg_auth_members m
             JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
             WHERE {inherit} ORDER BY 1, 2"
        ))
        .fetch_all(&mut **tx)
        .await
        .map_err(self.sql("read role memberships"))?;
        catalog
            .memberships
            .extend(rows.into_iter().map(|(role, member)| Membership {
                revoke_sql: format!("REVOKE {} FROM {}", q(&role), q(&member)),
                role,
                member,
            }));
        Ok(())
    }

    async fn catalog_privileges(
        &self,
        tx: &mut Transaction<'_, Pg>,
        catalog: &mut Catalog,
    ) -> Result<(), EngineError> {
        let g = grantee_sql("a.grantee");
        let by = "pg_get_userbyid(a.grantor)::text";
        // kind, schema, name, column, privilege, grantee, grantable, grantor, object owner
        let queries = [
            format!(
                "SELECT 'database', '', d.datname::text, '', a.privilege_type, {g}, a.is_grantable, {by},
                        pg_get_userbyid(d.datdba)::text
                 FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
                 WHERE d.datname = current_database()"
            ),
            format!(
                "SELECT 'schema', '', n.nspname::text, '', a.privilege_type, {g}, a.is_grantable, {by},
                        pg_get_userbyid(n.nspowner)::text
                 FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
                 WHERE {SYSTEM_SCHEMAS}"
            ),
            format!(
                "SELECT CASE WHEN c.relkind = 'S' THEN 'sequence' ELSE 'table' END, n.nspname::text,
                        c.relname::text, '', a.privilege_type, {g}, a.is_grantable, {by},
                        pg_get_userbyid(c.relowner)::text
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                      aclexplode(coalesce(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::\"char\", c.relowner))) a
                 WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p', 'S') AND {SYSTEM_SCHEMAS}"
            ),
            format!(
                "SELECT 'column', n.nspname::text, c.relname::text, at.attname::text, a.privilege_type,
                        {g}, a.is_grantable, {by}, pg_get_userbyid(c.relowner)::text
                 FROM pg_attribute at JOIN pg_class c ON c.oid = at.attrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(at.attacl) a
                 WHERE at.attacl IS NOT NULL AND at.attnum > 0 AND NOT at.attisdropped AND {SYSTEM_SCHEMAS}"
            ),
            format!(
                "SELECT CASE WHEN p.prokind = 'p' THEN 'procedure' ELSE 'function' END, n.nspname::text,
                        p.proname::text || '(' || pg_get_function_identity_arguments(p.oid) || ')', '',
                        a.privilege_type, {g}, a.is_grantable, {by},
                        pg_get_userbyid(p.proowner)::text
                 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace,
                      aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                 WHERE {SYSTEM_SCHEMAS}"
            ),
        ];
        for sql in &queries {
            let rows = sqlx::query(sql)
                .fetch_all(&mut **tx)
                .await
                .map_err(self.sql("read privileges"))?;
            for row in rows {
                let p = self.privilege(&row).map_err(self.sql("read privileges"))?;
                catalog.privileges.push(p);
            }
        }
        Ok(())
    }

    fn privilege(&self, row: &sqlx::postgres::PgRow) -> Result<Privilege, sqlx::Error> {
        let kind: String = row.try_get(0)?;
        let schema: String = row.try_get(1)?;
        let name: String = row.try_get(2)?;
        let column: String = row.try_get(3)?;
        let privilege: String = row.try_get(4)?;
        let grantee: String = row.try_get(5)?;
        let grantable: bool = row.try_get(6)?;
        let grantor: String = row.try_get(7)?;
        let object_owner: String = row.try_get(8)?;
        let owner = kind != "column" && grantee == object_owner && grantor == object_owner;
        let qualified = || format!("{}.{}", q(&schema), q(&name));
        let (object, on) = match kind.as_str() {
            "database" => (
                Object::Database(name.clone()),
                format!("DATABASE {}", q(&name)),
            ),
            "schema" => (Object::Schema(name.clone()), format!("SCHEMA {}", q(&name))),
            "sequence" => (
                Object::Sequence {
                    schema: schema.clone(),
                    name: name.clone(),
                },
                format!("SEQUENCE {}", qualified()),
            ),
            "column" => (
                Object::Column {
                    schema: schema.clone(),
                    table: name.clone(),
                    column: column.clone(),
                },
                format!("TABLE {}", qualified()),
            ),
            "function" | "procedure" => {
                // `name(args)`: quote the name, keep the server's argument list.
                let (bare, args) = name.split_once('(').unwrap_or((&name, ")"));
                (
                    Object::Routine {
                        schema: schema.clone(),
                        name: name.clone(),
                    },
                    format!(
                        "{} {}.{}({args}",
                        kind.to_ascii_uppercase(),
                        q(&schema),
                        q(bare)
                    ),
                )
            }
            _ => (
                Object::Table {
                    schema: schema.clone(),
                    name: name.clone(),
                },
                format!("TABLE {}", qualified()),
            ),
        };
        let what = if kind == "column" {
            format!("{privilege} ({})", q(&column))
        } else {
            privilege.clone()
        };
        // Only the grantor's revoke removes its grant (PostgreSQL before 16
        // takes `GRANTED BY` from the current user only); the owner's, or a
        // superuser's, is made as the owner.
        let revoke = format!("REVOKE {what} ON {on} FROM {}", role_sql(&grantee));
        let revoke_sql = if grantor == object_owner {
            revoke
        } else {
            format!("SET ROLE {}; {revoke}; RESET ROLE", q(&grantor))
        };
        Ok(Privilege {
            grantee,
            object,
            privilege,
            grantable,
            grantor,
            owner,
            revoke_sql,
        })
    }
}
