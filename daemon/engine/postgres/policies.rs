//! Row-level security for `row_filter` grants: one policy per account and
//! table, named `credrotd_<account>`, `TO` the scoped role, for the granted
//! commands. Its comment records a hash of the declared filter and a hash of
//! the expressions as the server stored them, so that a filter changed in the
//! inventory and a policy changed behind credrotd's back both show in `plan`
//! and are put back by the next rotation. credrotd never turns row-level
//! security on: a filtered table without it is an error.

use std::collections::BTreeMap;

use sqlx::{Postgres as Pg, Transaction};

use super::sql::{lit, q};
use super::{Plan, Postgres};
use crate::engine::EngineError;
use crate::inventory::{Account, ObjectKind, Objects};

const MARKER: &str = "credrotd:row_filter";

/// The hash of the expressions the server stored, as SQL over `pg_policy p`.
const STORED: &str = "md5(coalesce(pg_get_expr(p.polqual, p.polrelid), '') || '|' || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), ''))";

/// One policy the inventory asks for.
struct Wanted {
    /// `SELECT`, `INSERT`, `UPDATE`, `DELETE` or `ALL` (several commands: the
    /// privileges keep the rest out).
    cmd: &'static str,
    expr: String,
}

impl Wanted {
    /// The short hash of what is declared: a changed filter or command shows.
    fn hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let h = Sha256::digest(format!("{}\n{}", self.cmd, self.expr).as_bytes());
        h[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn clauses(&self) -> String {
        let e = &self.expr;
        match self.cmd {
            "SELECT" | "DELETE" => format!("USING ({e})"),
            "INSERT" => format!("WITH CHECK ({e})"),
            _ => format!("USING ({e}) WITH CHECK ({e})"),
        }
    }
}

/// schema, table, polcmd, roles, permissive, comment, stored hash.
type PolicyRow = (
    String,
    String,
    String,
    Vec<String>,
    bool,
    Option<String>,
    String,
);

/// What a policy of that name holds now.
struct Found {
    cmd: String,
    roles: Vec<String>,
    permissive: bool,
    comment: Option<String>,
    stored: String,
}

fn cmd_of(polcmd: &str) -> &'static str {
    match polcmd {
        "r" => "SELECT",
        "a" => "INSERT",
        "w" => "UPDATE",
        "d" => "DELETE",
        _ => "ALL",
    }
}

pub(super) fn policy_name(account: &str) -> String {
    format!("credrotd_{account}")
}

impl Postgres {
    /// Adds to `plan` what brings the account's policies to its `row_filter`
    /// grants. `Err` when a filtered table has row-level security off: the
    /// filter would not apply, and the login would see every row.
    pub(super) async fn reconcile_policies(
        &self,
        tx: &mut Transaction<'_, Pg>,
        account: &Account,
        plan: &mut Plan,
    ) -> Result<(), EngineError> {
        let role = account.scoped_role();
        let name = policy_name(&account.name);
        let mut wanted: BTreeMap<(String, String), Wanted> = BTreeMap::new();
        for g in &account.grants {
            let (Some(expr), ObjectKind::Table, Some(Objects::Named(tables))) =
                (&g.row_filter, g.kind, &g.objects)
            else {
                continue;
            };
            let cmds: Vec<&'static str> = ["SELECT", "INSERT", "UPDATE", "DELETE"]
                .into_iter()
                .filter(|c| g.privileges.contains(c))
                .collect();
            let cmd = match cmds.as_slice() {
                [one] => *one,
                _ => "ALL",
            };
            for t in tables {
                wanted.insert(
                    (g.schema.clone(), t.clone()),
                    Wanted {
                        cmd,
                        expr: expr.clone(),
                    },
                );
            }
        }
        let rows: Vec<PolicyRow> =
            sqlx::query_as(&format!(
                "SELECT n.nspname::text, c.relname::text, p.polcmd::text,
                        ARRAY(SELECT r.rolname::text FROM pg_roles r WHERE r.oid = ANY(p.polroles) ORDER BY 1),
                        p.polpermissive, obj_description(p.oid, 'pg_policy'), {STORED}
                 FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE p.polname = $1"
            ))
            .bind(&name)
            .fetch_all(&mut **tx)
            .await
            .map_err(self.sql(format!("read row-level security policies of {role}")))?;
        let mut found: BTreeMap<(String, String), Found> = rows
            .into_iter()
            .map(|(s, t, cmd, roles, permissive, comment, stored)| {
                (
                    (s, t),
                    Found {
                        cmd: cmd_of(&cmd).to_owned(),
                        roles,
                        permissive,
                        comment,
                        stored,
                    },
                )
            })
            .collect();

        for ((schema, table), w) in &wanted {
            let target = format!("{}.{}", q(schema), q(table));
            let rls: Option<bool> = sqlx::query_scalar(
                "SELECT c.relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            )
            .bind(schema)
            .bind(table)
            .fetch_optional(&mut **tx)
            .await
            .map_err(self.sql(format!("read row-level security of {schema}.{table}")))?;
            match rls {
                // A missing table is reported with the grants.
                None => continue,
                Some(false) => {
                    return Err(EngineError::Invalid {
                        database: self.name.clone(),
                        what: format!(
                            "account {}: table {schema}.{table} has a row_filter but row-level security is off on it, so the filter would not apply; credrotd never turns it on (that changes what every other role sees): its owner runs ALTER TABLE {target} ENABLE ROW LEVEL SECURITY, after giving the other roles that use it policies",
                            account.name
                        ),
                    });
                }
                Some(true) => {}
            }
            let hash = w.hash();
            let current = found.remove(&(schema.clone(), table.clone()));
            if let Some(f) = &current {
                let ours = f.comment.as_deref().is_some_and(|c| c.starts_with(MARKER));
                if !ours {
                    plan.stuck.push(crate::engine::Stuck {
                        what: format!("policy {name} on table {schema}.{table}"),
                        error:
                            "a policy of that name exists and is not credrotd's; rename or drop it"
                                .to_owned(),
                    });
                    continue;
                }
                let expected = format!("{MARKER} filter={hash} stored={}", f.stored);
                if f.cmd == w.cmd
                    && f.permissive
                    && f.roles == [role.to_owned()]
                    && f.comment.as_deref() == Some(expected.as_str())
                {
                    continue;
                }
            }
            // Replaced, created and marked in one statement: the mark records
            // the expressions as the server stored them, known only once
            // created; and one statement keeps the fix `audit` prints whole.
            let replace = if current.is_some() {
                format!("DROP POLICY IF EXISTS {} ON {target}; ", q(&name))
            } else {
                String::new()
            };
            plan.may(
                format!(
                    "DO $credrotd$ DECLARE stored text; BEGIN {replace}\
                     CREATE POLICY {pol} ON {target} AS PERMISSIVE FOR {cmd} TO {r} {clauses}; \
                     SELECT {STORED} INTO stored FROM pg_policy p WHERE p.polrelid = {regclass}::regclass AND p.polname = {lit_name}; \
                     EXECUTE 'COMMENT ON POLICY ' || quote_ident({lit_name}) || ' ON ' || {regclass} || ' IS ' || quote_literal({marker} || stored); \
                     END $credrotd$",
                    pol = q(&name),
                    cmd = w.cmd,
                    r = q(role),
                    clauses = w.clauses(),
                    regclass = lit(&target),
                    lit_name = lit(&name),
                    marker = lit(&format!("{MARKER} filter={hash} stored=")),
                ),
                None,
            );
        }
        // Policies of this account on tables it no longer filters.
        for ((schema, table), f) in found {
            if f.comment.as_deref().is_some_and(|c| c.starts_with(MARKER)) {
                plan.may(
                    format!("DROP POLICY {} ON {}.{}", q(&name), q(&schema), q(&table)),
                    None,
                );
            }
        }
        Ok(())
    }
}
