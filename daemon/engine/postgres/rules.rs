//! What an inventory may ask of a PostgreSQL database, as `credrotd check`
//! enforces it: the URL, name limits, privileges per object kind, role
//! settings and the memberships production refuses, and what the URL says
//! about TLS. Pure functions and constants; the inventory validator calls them.
//! `mysql/rules.rs` is the same for MySQL and MariaDB.

use url::Url;

use crate::engine::transport::{is_loopback, last_query_value, Exposure, Transport};
use crate::inventory::ObjectKind;

/// URL schemes of an `engine: postgres` database.
pub const URL_SCHEMES: &[&str] = &["postgres://", "postgresql://"];

/// The URL form named in the error for another scheme.
pub const URL_FORM: &str = "postgres://user@host:port/dbname";

/// Query keys sqlx reads the TLS mode from (the last one wins).
pub const SSL_MODE_KEYS: &[&str] = &["sslmode", "ssl-mode"];

/// The TLS modes sqlx knows, lowercase (the URL's value is compared
/// case-insensitively).
pub const SSL_MODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// Query keys sqlx reads a root certificate from. sqlx adds it to the system's
/// root CAs; it does not replace them.
pub const SSL_ROOT_CERT_KEYS: &[&str] = &["sslrootcert", "ssl-root-cert", "ssl-ca"];

/// What to add to a URL whose connection is not verified TLS.
pub const TLS_FIX: &str = "add sslmode=verify-full to the url (and sslrootcert=/path/to/ca.pem when a private CA signed the server's certificate)";

/// How sqlx would reach the server of `url`: through a Unix socket (a host
/// that is a path, in the authority or as `host=`), to a loopback host, or
/// over the network, verified only with `sslmode=verify-full`. The query is
/// read as sqlx reads it: `host` and `hostaddr` replace the authority's host.
pub fn transport(url: &Url) -> Transport {
    let mut host = url.host_str().filter(|h| !h.is_empty()).map(str::to_owned);
    // A path can only be written percent-encoded in the authority.
    let mut socket = host
        .as_deref()
        .is_some_and(|h| h.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("%2f")));
    for (key, value) in url.query_pairs() {
        match &*key {
            "host" if value.starts_with('/') => socket = true,
            "host" | "hostaddr" => host = Some(value.into_owned()),
            _ => {}
        }
    }
    let mode = last_query_value(url, SSL_MODE_KEYS).map(|m| m.to_ascii_lowercase());
    if mode.as_deref() == Some("verify-full") {
        return Transport::Verified;
    }
    if socket {
        return Transport::Local;
    }
    match host {
        None => Transport::Exposed(Exposure::NoHost),
        Some(h) if is_loopback(&h) => Transport::Local,
        Some(host) => Transport::Exposed(Exposure::Unverified { host, mode }),
    }
}

/// Why a connection with TLS mode `mode` (lowercase; `None`: not set) to
/// another host is not verified.
pub fn unverified_because(mode: Option<&str>) -> &'static str {
    match mode {
        None => "the url sets no sslmode, and sqlx's default, prefer, goes on in cleartext when the server (or a man in the middle) declines TLS",
        Some("prefer") => "sslmode=prefer goes on in cleartext when the server (or a man in the middle) declines TLS",
        Some("disable") | Some("allow") => "sqlx sends everything in cleartext with this sslmode",
        Some("require") => "sslmode=require encrypts but accepts any certificate, a man in the middle's too",
        Some("verify-ca") => "sqlx's sslmode=verify-ca checks no host name and trusts the system's root CAs besides sslrootcert, so a certificate any public CA issued, for any name, passes",
        Some(_) => "the sslmode is unknown",
    }
}

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
