//! What an inventory may ask of a MySQL 8 or MariaDB database, as `credrotd
//! check` enforces it: the URL and its `ssl-mode`, name limits, account hosts
//! and privileges per object kind. Pure functions and constants; the inventory
//! validator calls them. `postgres/rules.rs` is the same for PostgreSQL.

use url::Url;

use crate::engine::transport::{is_loopback, last_query_value, Exposure, Transport};
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

/// Query keys sqlx reads a CA certificate from. sqlx adds it to the system's
/// root CAs; it does not replace them.
pub const SSL_CA_KEYS: &[&str] = &["ssl-ca", "sslca"];

/// What to add to a URL whose connection is not verified TLS.
pub const TLS_FIX: &str = "add ssl-mode=VERIFY_IDENTITY to the url (and ssl-ca=/path/to/ca.pem when a private CA signed the server's certificate)";

/// How sqlx would reach the server of `url` (`mysql://`; `mariadb://` reads
/// the same): through a Unix socket (`socket=`), to a loopback host (sqlx's
/// default host is `localhost`), or over the network, verified only with
/// `ssl-mode=VERIFY_IDENTITY`.
pub fn transport(url: &Url) -> Transport {
    let mode = last_query_value(url, SSL_MODE_KEYS).map(|m| m.to_ascii_lowercase());
    if mode.as_deref() == Some("verify_identity") {
        return Transport::Verified;
    }
    if url.query_pairs().any(|(k, _)| k == "socket") {
        return Transport::Local;
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .unwrap_or("localhost");
    if is_loopback(host) {
        Transport::Local
    } else {
        Transport::Exposed(Exposure::Unverified {
            host: host.to_owned(),
            mode,
        })
    }
}

/// Why a connection with TLS mode `mode` (lowercase; `None`: not set) to
/// another host is not verified.
pub fn unverified_because(mode: Option<&str>) -> &'static str {
    match mode {
        None => "the url sets no ssl-mode, and sqlx's default, PREFERRED, goes on in cleartext when the server (or a man in the middle) offers no TLS",
        Some("preferred") => "ssl-mode=PREFERRED goes on in cleartext when the server (or a man in the middle) offers no TLS",
        Some("disabled") => "ssl-mode=DISABLED sends everything in cleartext",
        Some("required") => "ssl-mode=REQUIRED encrypts but accepts any certificate, a man in the middle's too",
        Some("verify_ca") => "sqlx's ssl-mode=VERIFY_CA checks no host name and trusts the system's root CAs besides ssl-ca, so a certificate any public CA issued, for any name, passes",
        Some(_) => "the ssl-mode is unknown",
    }
}

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
