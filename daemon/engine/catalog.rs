//! Every role of a target database and what it may do, read from the server's
//! catalog in one shape for both engines: what `credrotd audit` and `who-can`
//! look at. Read-only; each engine quotes the fix statements it puts here with
//! its own rules, so the analysis (in [`crate::audit`]) never writes SQL.

use chrono::{DateTime, Utc};

/// One snapshot of a database's roles, memberships and privileges.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// `PostgreSQL 15.4`, `MariaDB 10.11.6`.
    pub server: String,
    /// The role credrotd connects as (MySQL: `user@host`).
    pub admin: String,
    /// The server's clock when the snapshot was taken.
    pub now: DateTime<Utc>,
    pub roles: Vec<CatalogRole>,
    pub memberships: Vec<Membership>,
    pub privileges: Vec<Privilege>,
    /// Reconciliation (and so `plan`) already corrects the privileges of
    /// managed logins, column and database privileges, grant options and
    /// foreign members of scoped roles: the audit reports them from the plan,
    /// not a second time from the catalog.
    pub plan_covers_grants: bool,
}

/// A role (PostgreSQL), or a user or role (MySQL: users are `user@host`).
#[derive(Debug, Clone)]
pub struct CatalogRole {
    pub name: String,
    /// It may log in: `LOGIN` (PostgreSQL), an unlocked user (MySQL).
    pub can_login: bool,
    /// When its password stops working; `None`: never.
    pub valid_until: Option<DateTime<Utc>>,
    /// What credrotd's marker says, if it carries one.
    pub managed: Option<Managed>,
    /// Powers beyond its grants (superuser, FILE, a `%` host with global
    /// privileges, …), each with the statement that takes it away.
    pub dangerous: Vec<Attribute>,
    /// The server's own administrator (PostgreSQL's bootstrap superuser,
    /// MariaDB's `root@localhost`): it cannot be removed, so its powers are
    /// noted, not reported.
    pub bootstrap: bool,
    /// Drops it (e.g. `DROP ROLE "x"`, `DROP USER 'x'@'%'`).
    pub drop_sql: String,
}

/// The marker credrotd puts on what it manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    pub kind: ManagedKind,
    pub account: String,
    /// The ledger that owns the account (scoped roles only; `None`: no owner
    /// recorded).
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagedKind {
    /// An account's scoped role.
    Scoped,
    /// A per-rotation (ephemeral) login.
    Login,
    /// One of an alternating account's two logins.
    Alternating,
    /// A privilege role (PostgreSQL): the holder of one distinct set of
    /// declared grants, shared by the scoped roles of the accounts that declare
    /// it; its `account` is empty.
    Privileges,
}

/// A power a role holds beyond its grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// `SUPERUSER`, `member of pg_read_all_data`, `FILE`, …
    pub name: String,
    /// Takes it away.
    pub fix: String,
}

/// `member` has the privileges of `role` (PostgreSQL: with INHERIT; MySQL: a
/// granted role, active once it is the default role or set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub role: String,
    pub member: String,
    /// Revokes the membership.
    pub revoke_sql: String,
}

/// What a privilege is on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Object {
    /// Every object of the server (MySQL `*.*`).
    Server,
    /// The database itself (PostgreSQL `CONNECT`, `CREATE`, `TEMP`).
    Database(String),
    /// A schema (PostgreSQL), or a whole MySQL database (`db.*`).
    Schema(String),
    Table {
        schema: String,
        name: String,
    },
    Column {
        schema: String,
        table: String,
        column: String,
    },
    Sequence {
        schema: String,
        name: String,
    },
    /// A function or procedure; `name` carries the argument types on PostgreSQL.
    Routine {
        schema: String,
        name: String,
    },
}

impl Object {
    /// Whether a privilege on `self` covers `target` (MySQL: `db.*` covers the
    /// database's tables, `*.*` everything).
    pub fn covers(&self, target: &Object) -> bool {
        if self == target {
            return true;
        }
        match (self, target) {
            (Object::Server, _) => true,
            (
                Object::Schema(s),
                Object::Table { schema, .. }
                | Object::Sequence { schema, .. }
                | Object::Routine { schema, .. }
                | Object::Column { schema, .. },
            ) => s == schema,
            (
                Object::Table { schema, name },
                Object::Column {
                    schema: s, table, ..
                },
            ) => schema == s && name == table,
            _ => false,
        }
    }
}

impl std::fmt::Display for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Object::Server => f.write_str("server *.*"),
            Object::Database(d) => write!(f, "database {d}"),
            Object::Schema(s) => write!(f, "schema {s}"),
            Object::Table { schema, name } => write!(f, "table {schema}.{name}"),
            Object::Column {
                schema,
                table,
                column,
            } => write!(f, "column {schema}.{table}.{column}"),
            Object::Sequence { schema, name } => write!(f, "sequence {schema}.{name}"),
            Object::Routine { schema, name } => write!(f, "routine {schema}.{name}"),
        }
    }
}

/// One privilege held directly by `grantee`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privilege {
    pub grantee: String,
    pub object: Object,
    /// `SELECT`, `USAGE`, `EXECUTE`, … (`ALL` for an owner, which may do
    /// everything on what it owns).
    pub privilege: String,
    /// `WITH GRANT OPTION`.
    pub grantable: bool,
    /// Who granted it (`owner` for the owner's own rights).
    pub grantor: String,
    /// The owner's implicit rights: not a grant anyone made.
    pub owner: bool,
    /// Revokes it (as its grantor where the server needs that).
    pub revoke_sql: String,
}
