//! What an inventory may ask of a MySQL 8 or MariaDB database, as `credrotd
//! check` enforces it: the URL and its `ssl-mode`, name limits, account hosts
//! and privileges per object kind. Pure functions and constants; the inventory
//! validator calls them. `postgres/rules.rs` is the same for PostgreSQL.

use crate::inventory::ObjectKind;

/// URL schemes of an `engine: mysql` or `engine: mariadb` database.
pub const URL_SCHEMES: &[&str] = &["mysql://", "mariadb://"];

/// The URL form named in the error for another scheme.
pub const URL_FORM: &str = "mysql://user@host:port/dbname";

/// Query keys that set the TLS mode: sqlx reads `sslmode` as well as `ssl-mode`.
pub const SSL_MODE_KEYS: &[&str] = &["ssl-mode", "sslmode"];

/// The TLS modes sqlx knows, lowercase (the URL's value is compared
/// case-insensitively).
pub const SSL_MODES: &[&str] = &[
    "disabled",
    "preferred",
    "required",
    "verify_ca",
    "verify_identity",
];

/// The longest user name MySQL 8 takes, in characters. `engine: mysql` may turn
/// out to be MariaDB at connect; this stricter limit applies until `engine:
/// mariadb` is written.
pub const MYSQL_MAX_NAME_LEN: usize = 32;

/// The longest user name MariaDB takes, in characters.
pub const MARIADB_MAX_NAME_LEN: usize = super::sql::MAX_USER_CHARS;

/// Privileges on a table (`db.t`, or every table: `db.*`).
pub const TABLE_PRIVILEGES: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "CREATE",
    "DROP",
    "INDEX",
    "ALTER",
    "REFERENCES",
    "TRIGGER",
    "CREATE VIEW",
    "SHOW VIEW",
];

/// Privileges on a database (`db.*`): the table ones on every table, and those
/// that exist only at database level.
pub const DATABASE_PRIVILEGES: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "INDEX",
    "ALTER",
    "REFERENCES",
    "TRIGGER",
    "CREATE",
    "DROP",
    "CREATE TEMPORARY TABLES",
    "LOCK TABLES",
    "CREATE ROUTINE",
    "ALTER ROUTINE",
    "EXECUTE",
    "EVENT",
    "CREATE VIEW",
    "SHOW VIEW",
];

/// Privileges on a stored function or procedure.
pub const ROUTINE_PRIVILEGES: &[&str] = &["EXECUTE", "ALTER ROUTINE"];

/// Privileges that exist for this kind. A grant without objects is on the
/// database (`db.*`): the database-level privileges; `tables: "*"` is also
/// `db.*`, with the table privileges. There are no sequence privileges (a
/// MariaDB sequence is a table).
pub fn privileges(kind: ObjectKind) -> &'static [&'static str] {
    match kind {
        ObjectKind::Schema => DATABASE_PRIVILEGES,
        ObjectKind::Table => TABLE_PRIVILEGES,
        ObjectKind::Function | ObjectKind::Procedure => ROUTINE_PRIVILEGES,
        ObjectKind::Sequence => &[],
    }
}

/// An account host part credrotd accepts: a name, an address or a pattern with
/// `%` and `_`, as the server stores it (lowercase, at most 255 bytes). `None`
/// when it is fine, else what is wrong with it.
pub fn host_problem(h: &str) -> Option<&'static str> {
    if h.is_empty() {
        Some("must not be empty (write \"%\" for any host)")
    } else if h.len() > 255 {
        Some("is longer than 255 bytes, the server's limit")
    } else if h.chars().any(|c| c.is_ascii_uppercase()) {
        Some("must be lowercase (the server stores host names in lowercase)")
    } else if !h
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "%_.-:/".contains(c))
    {
        Some("may hold only letters, digits and % _ . - : /")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_lowercase_names_addresses_or_patterns() {
        for ok in [
            "%",
            "10.0.%",
            "app-1.example.com",
            "::1",
            "192.168.1.0/255.255.255.0",
        ] {
            assert_eq!(host_problem(ok), None, "{ok}");
        }
        for bad in ["", "App.example.com", "a b", "h'", &"h".repeat(256)] {
            assert!(host_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn sequences_have_no_privileges_and_routines_two() {
        assert!(privileges(ObjectKind::Sequence).is_empty());
        assert_eq!(
            privileges(ObjectKind::Procedure),
            ["EXECUTE", "ALTER ROUTINE"]
        );
        assert_eq!(MARIADB_MAX_NAME_LEN, 80);
    }
}
