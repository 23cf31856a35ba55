//! What an inventory may ask of a PostgreSQL database, as `credrotd check`
//! enforces it: the URL, name limits, privileges per object kind, role
//! settings and the memberships production refuses. Pure functions and
//! constants; the inventory validator calls them. `mysql/rules.rs` is the same
//! for MySQL and MariaDB.

use crate::inventory::ObjectKind;

/// URL schemes of an `engine: postgres` database.
pub const URL_SCHEMES: &[&str] = &["postgres://", "postgresql://"];

/// The URL form named in the error for another scheme.
pub const URL_FORM: &str = "postgres://user@host:port/dbname";

/// The longest role name the server takes, in bytes (`NAMEDATALEN` - 1).
pub const MAX_NAME_LEN: usize = 63;

/// Privileges that exist for this kind, in PostgreSQL's spelling.
pub fn privileges(kind: ObjectKind) -> &'static [&'static str] {
    match kind {
        ObjectKind::Schema => &["USAGE", "CREATE"],
        ObjectKind::Table => &[
            "SELECT",
            "INSERT",
            "UPDATE",
            "DELETE",
            "TRUNCATE",
            "REFERENCES",
            "TRIGGER",
        ],
        ObjectKind::Sequence => &["USAGE", "SELECT", "UPDATE"],
        ObjectKind::Function | ObjectKind::Procedure => &["EXECUTE"],
    }
}

/// A parameter name `ALTER ROLE … SET` takes: `ident(.ident)*` of lowercase
/// letters, digits and `_` (e.g. `app.tenant_id`).
pub fn is_setting_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && (b[0].is_ascii_lowercase() || b[0] == b'_')
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
        })
}

/// Settings that would let an account escape its scoped role, that only a
/// superuser may set, or that take a list (a quoted value would become one
/// element).
pub const FORBIDDEN_SETTINGS: &[&str] = &[
    "role",
    "session_authorization",
    "session_replication_role",
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "local_preload_libraries",
    "shared_preload_libraries",
];

/// Predefined roles that production refuses as `member_of` targets: each one reads
/// or writes everything, or reaches the server's file system.
pub const DANGEROUS_MEMBERSHIPS: &[&str] = &[
    "pg_read_all_data",
    "pg_write_all_data",
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_names_are_dotted_lowercase_identifiers() {
        for ok in ["work_mem", "app.tenant_id", "_x.y2"] {
            assert!(is_setting_name(ok), "{ok}");
        }
        for bad in [
            "",
            "App.x",
            "app..x",
            "app.",
            ".x",
            "1x",
            "app.tenant-id",
            "a b",
        ] {
            assert!(!is_setting_name(bad), "{bad}");
        }
    }

    #[test]
    fn routines_have_only_execute() {
        assert_eq!(privileges(ObjectKind::Function), ["EXECUTE"]);
        assert_eq!(privileges(ObjectKind::Procedure), ["EXECUTE"]);
        assert!(privileges(ObjectKind::Table).contains(&"TRUNCATE"));
    }
}
