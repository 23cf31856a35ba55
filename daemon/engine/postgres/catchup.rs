//! Reconciliation beyond the declared object privileges: what `credrotd audit`
//! finds and the grant/revoke diff in `diff()` does not look at. Every
//! statement is a `plan.may`, so a refusal is a stuck item, never an error.
//!
//! - privileges the account's privilege role holds and the inventory does not
//!   declare, and any the scoped role holds directly (it has its privileges
//!   only through the privilege role), are revoked, each as the role that granted it where the admin may act as that
//!   role (`SET ROLE grantor; REVOKE …; RESET ROLE`): before PostgreSQL 19,
//!   `REVOKE … GRANTED BY` takes only the current user on object privileges,
//!   and a plain `REVOKE` removes only the grant of the role the server picks
//!   (the owner, or the admin itself);
//! - the grant option on a declared privilege (`REVOKE GRANT OPTION FOR`);
//! - column privileges and privileges on the database itself;
//! - any direct grant to one of the account's login roles (they get their
//!   privileges only through the scoped role);
//! - members of the scoped role or the privilege role other than the
//!   account's logins, its static role, the admin and accounts' scoped roles
//!   (whose own reconciliation owns that membership).
//!
//! Objects owned by the scoped role are left alone, as everywhere in `diff()`.
//!
//! `SET ROLE …; REVOKE …; RESET ROLE` is one entry of the plan: the apply path
//! sends it as one simple-protocol query inside the entry's savepoint, so a
//! refusal anywhere in it rolls back to the savepoint, which also undoes the
//! `SET ROLE`.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{Postgres as Pg, Transaction};

use super::sql::{fixed_comment, login_comment, parse_scoped, q, Obj};
use super::{Plan, Postgres, PG16};
use crate::engine::EngineError;
use crate::inventory::{Account, Strategy};

/// What a privilege is on, as far as revoking it goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Obj(Obj),
    /// Schema, table, column.
    Column(String, String, String),
    Database(String),
}

impl Target {
    /// `SELECT ON TABLE "s"."t"`, `SELECT ("c") ON TABLE "s"."t"`, `CREATE ON
    /// DATABASE "d"`: the part of a `REVOKE` between the keyword and `FROM`.
    fn privilege_on(&self, privilege: &str) -> String {
        match self {
            Target::Obj(obj) => format!("{privilege} ON {}", obj.sql()),
            Target::Column(s, t, c) => {
                format!("{privilege} ({}) ON TABLE {}.{}", q(c), q(s), q(t))
            }
            Target::Database(d) => format!("{privilege} ON DATABASE {}", q(d)),
        }
    }
}

/// One grantor's grant of one privilege.
struct Grant {
    grantor: String,
    /// The object's owner.
    owner: String,
    grantable: bool,
}

/// The privileges a role holds directly, by target and privilege.
type Held = BTreeMap<(Target, String), Vec<Grant>>;

/// Every ACL entry naming one of the roles `$1` as grantee, on the current
/// database, schemas, relations, columns and routines; never the owner's own
/// entry. Only the objects whose ACL mentions one of them (`acl_mentions!`).
/// Columns: grantee, kind, schema, name, identity arguments, column,
/// privilege, grantor, owner, grantable.
const HELD: &str = concat!(
    acl_mentions!("rolname = ANY($1)"),
    "SELECT pg_get_userbyid(a.grantee)::text, 'database'::text, ''::text, d.datname::text, ''::text, ''::text, a.privilege_type,
       pg_get_userbyid(a.grantor)::text, pg_get_userbyid(d.datdba)::text, a.is_grantable
FROM pg_database d, unnest(d.datacl) i(item), aclexplode(ARRAY[i.item]) a
WHERE d.datname = current_database()
  AND d.oid IN (SELECT objid FROM m WHERE classid = 'pg_database'::regclass)
  AND a.grantee IN (SELECT oid FROM r) AND d.datdba <> a.grantee
UNION ALL
SELECT pg_get_userbyid(a.grantee)::text, 'schema', '', n.nspname::text, '', '', a.privilege_type,
       pg_get_userbyid(a.grantor)::text, pg_get_userbyid(n.nspowner)::text, a.is_grantable
FROM pg_namespace n, unnest(n.nspacl) i(item), aclexplode(ARRAY[i.item]) a
WHERE n.oid IN (SELECT objid FROM m WHERE classid = 'pg_namespace'::regclass)
  AND a.grantee IN (SELECT oid FROM r) AND n.nspowner <> a.grantee
UNION ALL
SELECT pg_get_userbyid(a.grantee)::text, CASE WHEN c.relkind = 'S' THEN 'sequence' ELSE 'table' END, n.nspname::text,
       c.relname::text, '', '', a.privilege_type,
       pg_get_userbyid(a.grantor)::text, pg_get_userbyid(c.relowner)::text, a.is_grantable
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, unnest(c.relacl) i(item), aclexplode(ARRAY[i.item]) a
WHERE c.oid IN (SELECT objid FROM m WHERE classid = 'pg_class'::regclass AND objsubid = 0)
  AND a.grantee IN (SELECT oid FROM r) AND c.relowner <> a.grantee
UNION ALL
SELECT pg_get_userbyid(a.grantee)::text, 'column', n.nspname::text, c.relname::text, '', at.attname::text, a.privilege_type,
       pg_get_userbyid(a.grantor)::text, pg_get_userbyid(c.relowner)::text, a.is_grantable
FROM pg_attribute at JOIN pg_class c ON c.oid = at.attrelid
     JOIN pg_namespace n ON n.oid = c.relnamespace, unnest(at.attacl) i(item), aclexplode(ARRAY[i.item]) a
WHERE (at.attrelid, at.attnum) IN (SELECT objid, objsubid FROM m WHERE classid = 'pg_class'::regclass AND objsubid > 0)
  AND at.attacl IS NOT NULL AND at.attnum > 0 AND NOT at.attisdropped
  AND a.grantee IN (SELECT oid FROM r) AND c.relowner <> a.grantee
UNION ALL
SELECT pg_get_userbyid(a.grantee)::text, 'routine', n.nspname::text, p.proname::text, pg_get_function_identity_arguments(p.oid),
       '', a.privilege_type,
       pg_get_userbyid(a.grantor)::text, pg_get_userbyid(p.proowner)::text, a.is_grantable
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace, unnest(p.proacl) i(item), aclexplode(ARRAY[i.item]) a
WHERE p.oid IN (SELECT objid FROM m WHERE classid = 'pg_proc'::regclass)
  AND a.grantee IN (SELECT oid FROM r) AND p.proowner <> a.grantee"
);

type HeldRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    bool,
);

/// Who the admin is, and which roles it may act as (read once per role).
struct Acting {
    admin: String,
    superuser: bool,
    pg16: bool,
    /// Per role: the admin has its privileges (`USAGE`), may `SET ROLE` to it.
    powers: BTreeMap<String, (bool, bool)>,
}

/// How a grant made by one grantor can be revoked.
enum Revoker {
    /// A plain statement by the admin: the grantor is the admin, or the
    /// object's owner whose privileges the admin has (or is a superuser).
    Admin,
    /// As the grantor: `SET ROLE` for object privileges, `GRANTED BY` for
    /// memberships (PostgreSQL 16+).
    As(String),
    /// The admin cannot act as the grantor.
    Blocked(String),
}

impl Postgres {
    /// Adds to `plan` what brings the scoped role (and the account's logins)
    /// down to the declared privileges: everything in the module comment.
    /// `desired` is the declared object privileges as `diff()` resolved them.
    pub(super) async fn catch_up(
        &self,
        tx: &mut Transaction<'_, Pg>,
        account: &Account,
        holder: Option<&str>,
        desired: &BTreeSet<(Obj, String)>,
        plan: &mut Plan,
    ) -> Result<(), EngineError> {
        let role = account.scoped_role();
        let (admin, superuser, version): (String, bool, i32) = sqlx::query_as(
            "SELECT current_user::text, rolsuper, current_setting('server_version_num')::int4
             FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&mut **tx)
        .await
        .map_err(self.sql("read the admin's attributes"))?;
        let mut acting = Acting {
            admin,
            superuser,
            pg16: version >= PG16,
            powers: BTreeMap::new(),
        };

        // Direct grants to the account's logins first: a grant the scoped role
        // made to one of them with a grant option it holds would otherwise keep
        // the scoped role's grant option from being revoked.
        let logins: Vec<String> = sqlx::query_scalar(
            "SELECT r.rolname::text FROM pg_shdescription d JOIN pg_roles r ON r.oid = d.objoid
             WHERE d.classoid = 'pg_authid'::regclass AND d.description IN ($1, $2) ORDER BY 1",
        )
        .bind(login_comment(&account.name))
        .bind(fixed_comment(&account.name))
        .fetch_all(&mut **tx)
        .await
        .map_err(self.sql(format!("list login roles of {}", account.name)))?;
        let mut grantees = logins.clone();
        grantees.push(role.to_owned());
        grantees.extend(holder.map(str::to_owned));
        let mut held = self.held(tx, &grantees, role).await?;
        for login in &logins {
            for ((target, privilege), grants) in held.remove(login).unwrap_or_default() {
                let revoke = format!(
                    "REVOKE {} FROM {}",
                    target.privilege_on(&privilege),
                    q(login)
                );
                self.revoke(tx, &mut acting, plan, revoke, &grants, "privilege")
                    .await?;
            }
        }

        // The scoped role holds nothing directly: its privileges come from the
        // privilege role, which holds exactly what is declared.
        let nothing = BTreeSet::new();
        let holders = std::iter::once((role, &nothing)).chain(holder.map(|p| (p, desired)));
        for (grantee, desired) in holders {
            for ((target, privilege), grants) in held.remove(grantee).unwrap_or_default() {
                let undeclared = match &target {
                    Target::Obj(obj) => !desired.contains(&(obj.clone(), privilege.clone())),
                    // Never declared on PostgreSQL.
                    Target::Column(..) | Target::Database(_) => true,
                };
                let on = target.privilege_on(&privilege);
                if undeclared {
                    let revoke = format!("REVOKE {on} FROM {}", q(grantee));
                    self.revoke(tx, &mut acting, plan, revoke, &grants, "privilege")
                        .await?;
                } else {
                    let grants: Vec<Grant> = grants.into_iter().filter(|g| g.grantable).collect();
                    if !grants.is_empty() {
                        let revoke = format!("REVOKE GRANT OPTION FOR {on} FROM {}", q(grantee));
                        self.revoke(tx, &mut acting, plan, revoke, &grants, "grant option")
                            .await?;
                    }
                }
            }
        }

        if let Some(p) = holder {
            self.other_members(tx, account, p, &mut acting, plan)
                .await?;
        }
        self.other_members(tx, account, role, &mut acting, plan)
            .await
    }

    /// What each of `grantees` holds directly (one catalog scan for all),
    /// leaving out objects `scoped` owns.
    async fn held(
        &self,
        tx: &mut Transaction<'_, Pg>,
        grantees: &[String],
        scoped: &str,
    ) -> Result<BTreeMap<String, Held>, EngineError> {
        let rows: Vec<HeldRow> = sqlx::query_as(HELD)
            .bind(grantees)
            .fetch_all(&mut **tx)
            .await
            .map_err(self.sql(format!("read privileges of {}", grantees.join(", "))))?;
        let mut out: BTreeMap<String, Held> = BTreeMap::new();
        for (grantee, kind, schema, name, args, column, privilege, grantor, owner, grantable) in
            rows
        {
            if owner == scoped {
                continue;
            }
            let target = match kind.as_str() {
                "database" => Target::Database(name),
                "schema" => Target::Obj(Obj::Schema(name)),
                "sequence" => Target::Obj(Obj::Sequence(schema, name)),
                "column" => Target::Column(schema, name, column),
                "routine" => Target::Obj(Obj::Function(schema, name, args)),
                _ => Target::Obj(Obj::Table(schema, name)),
            };
            out.entry(grantee)
                .or_default()
                .entry((target, privilege))
                .or_default()
                .push(Grant {
                    grantor,
                    owner,
                    grantable,
                });
        }
        Ok(out)
    }

    /// Whether the admin has the privileges of `role`, and may `SET ROLE` to it
    /// (PostgreSQL 16+: the membership's SET option).
    async fn powers(
        &self,
        tx: &mut Transaction<'_, Pg>,
        acting: &mut Acting,
        role: &str,
    ) -> Result<(bool, bool), EngineError> {
        if let Some(p) = acting.powers.get(role) {
            return Ok(*p);
        }
        let set = if acting.pg16 { "SET" } else { "MEMBER" };
        let p: Option<(bool, bool)> = sqlx::query_as(
            "SELECT pg_has_role(oid, 'USAGE'), pg_has_role(oid, $2) FROM pg_roles WHERE rolname = $1",
        )
        .bind(role)
        .bind(set)
        .fetch_optional(&mut **tx)
        .await
        .map_err(self.sql(format!("check membership in {role}")))?;
        let p = p.unwrap_or((false, false));
        acting.powers.insert(role.to_owned(), p);
        Ok(p)
    }

    /// How the admin revokes a grant `grantor` made on an object `owner` owns.
    /// A superuser's plain `REVOKE` is made as the owner; anyone else's as the
    /// owner when it has the owner's privileges, otherwise as itself or a role
    /// it inherits a grant option from (the server's pick, not ours).
    async fn object_revoker(
        &self,
        tx: &mut Transaction<'_, Pg>,
        acting: &mut Acting,
        grantor: &str,
        owner: &str,
    ) -> Result<Revoker, EngineError> {
        if grantor == acting.admin {
            return Ok(Revoker::Admin);
        }
        if grantor == owner && (acting.superuser || self.powers(tx, acting, owner).await?.0) {
            return Ok(Revoker::Admin);
        }
        if acting.superuser || self.powers(tx, acting, grantor).await?.1 {
            Ok(Revoker::As(grantor.to_owned()))
        } else {
            Ok(Revoker::Blocked(grantor.to_owned()))
        }
    }

    /// Plans `revoke` (`REVOKE … FROM role`) once for the grants the admin
    /// revokes itself or cannot revoke (with why, for the stuck report), and
    /// once as each other grantor it may act as. `what` names the thing in the
    /// report: "privilege" or "grant option".
    async fn revoke(
        &self,
        tx: &mut Transaction<'_, Pg>,
        acting: &mut Acting,
        plan: &mut Plan,
        revoke: String,
        grants: &[Grant],
        what: &str,
    ) -> Result<(), EngineError> {
        let mut plain: BTreeSet<String> = BTreeSet::new();
        let mut blocked: BTreeSet<String> = BTreeSet::new();
        let mut as_grantor: BTreeSet<String> = BTreeSet::new();
        for g in grants {
            match self
                .object_revoker(tx, acting, &g.grantor, &g.owner)
                .await?
            {
                Revoker::Admin => {
                    plain.insert(g.grantor.clone());
                }
                Revoker::As(r) => {
                    as_grantor.insert(r);
                }
                Revoker::Blocked(r) => {
                    blocked.insert(r);
                }
            }
        }
        if !plain.is_empty() || !blocked.is_empty() {
            let by: Vec<&str> = plain.iter().chain(&blocked).map(String::as_str).collect();
            let mut why = format!(
                "the {what} was granted by {}; only that role (or the object's owner, by revoking its grant option with CASCADE) can revoke it",
                by.join(", ")
            );
            if !blocked.is_empty() {
                let blocked: Vec<&str> = blocked.iter().map(String::as_str).collect();
                why.push_str(&format!(
                    ", and the admin cannot act as {} ({})",
                    blocked.join(", "),
                    if acting.pg16 {
                        "no membership with the SET option"
                    } else {
                        "not a member"
                    }
                ));
            }
            plan.may(revoke.clone(), Some(why));
        }
        for g in as_grantor {
            plan.may(
                format!("SET ROLE {}; {revoke}; RESET ROLE", q(&g)),
                Some(format!(
                    "the {what} was granted by {g}, and revoking it as {g} did not remove it ({g} may have the privileges of the object's owner, whose grant it is then taken to be)"
                )),
            );
        }
        Ok(())
    }

    /// Members of `role` (the scoped role, or the account's privilege role)
    /// that are none of: the account's logins, its static role, the admin,
    /// another account's scoped role (whose own reconciliation decides that
    /// membership).
    async fn other_members(
        &self,
        tx: &mut Transaction<'_, Pg>,
        account: &Account,
        role: &str,
        acting: &mut Acting,
        plan: &mut Plan,
    ) -> Result<(), EngineError> {
        let rows: Vec<(String, Option<String>, String)> = sqlx::query_as(
            "SELECT u.rolname::text, shobj_description(u.oid, 'pg_authid'),
                    pg_get_userbyid(m.grantor)::text
             FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member
             WHERE m.roleid = (SELECT oid FROM pg_roles WHERE rolname = $1) ORDER BY 1, 3",
        )
        .bind(role)
        .fetch_all(&mut **tx)
        .await
        .map_err(self.sql(format!("read members of {role}")))?;
        let own = [login_comment(&account.name), fixed_comment(&account.name)];
        let static_role = match &account.strategy {
            Strategy::Static { role, .. } => Some(role.as_str()),
            _ => None,
        };
        let mut members: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (member, comment, grantor) in rows {
            let comment = comment.as_deref();
            if comment.is_some_and(|c| own.iter().any(|o| o == c))
                || static_role == Some(member.as_str())
                || member == acting.admin
                || comment.and_then(parse_scoped).is_some()
            {
                continue;
            }
            members.entry(member).or_default().insert(grantor);
        }
        for (member, grantors) in members {
            let revoke = format!("REVOKE {} FROM {}", q(role), q(&member));
            if !acting.pg16 {
                // One membership per pair, revoked by CREATEROLE or ADMIN OPTION
                // whoever granted it.
                plan.may(revoke, None);
                continue;
            }
            // PostgreSQL 16+: one membership per grantor; a plain REVOKE removes
            // the admin's (a superuser's: the bootstrap superuser's).
            let mut plain = false;
            let mut blocked = Vec::new();
            for g in grantors {
                if g == acting.admin {
                    plain = true;
                } else if acting.superuser || self.powers(tx, acting, &g).await?.0 {
                    plan.may(
                        format!("{revoke} GRANTED BY {}", q(&g)),
                        Some(format!("the membership was granted by {g}")),
                    );
                } else {
                    blocked.push(g);
                }
            }
            if plain || !blocked.is_empty() {
                let why = (!blocked.is_empty()).then(|| {
                    format!(
                        "the membership was granted by {}, whose privileges the admin does not have",
                        blocked.join(", ")
                    )
                });
                plan.may(revoke, why);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_targets_quote_every_name() {
        let col = Target::Column("s\"x".into(), "T".into(), "c c".into());
        assert_eq!(
            col.privilege_on("UPDATE"),
            "UPDATE (\"c c\") ON TABLE \"s\"\"x\".\"T\""
        );
        assert_eq!(
            Target::Database("my db".into()).privilege_on("CREATE"),
            "CREATE ON DATABASE \"my db\""
        );
        // The same text as the grant diff's statements.
        let obj = Obj::Function("ops".into(), "f".into(), "n integer".into());
        assert_eq!(
            Target::Obj(obj.clone()).privilege_on("EXECUTE"),
            format!("EXECUTE ON {}", obj.sql())
        );
    }
}
