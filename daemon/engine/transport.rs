//! What a database URL says about the path between credrotd and the server: a
//! Unix socket or loopback address, TLS that checks the server's certificate and
//! name, or neither. Pure: each engine's `rules::transport` reads its own URL
//! keys the way sqlx does, and `credrotd check` refuses [`Transport::Exposed`]
//! in production (README: "TLS to databases").

use std::net::IpAddr;

/// How a connection made from a database URL reaches the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// A Unix socket or a loopback address: no network in between.
    Local,
    /// TLS that checks the server's certificate chain and host name.
    Verified,
    /// Neither: whoever sits on the network path can read the admin password
    /// and, at each verify login, the new credential.
    Exposed(Exposure),
}

/// Why a connection is [`Transport::Exposed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exposure {
    /// The URL names no host, so where the connection goes is decided at run
    /// time (PostgreSQL: `PGHOST`, `PGHOSTADDR` or a local socket).
    NoHost,
    /// A host that is not this machine, without verified TLS. `mode` is the
    /// URL's TLS mode, lowercase (`None`: not set, sqlx's default applies).
    Unverified { host: String, mode: Option<String> },
}

/// Whether `host`, as a URL writes it, is this machine: `localhost` or a
/// loopback address (127.0.0.0/8, `::1`, or 127.x mapped into IPv6).
pub fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => a.is_loopback(),
        Ok(IpAddr::V6(a)) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|a| a.is_loopback()),
        Err(_) => false,
    }
}

/// The last value of any of `keys` in the URL's query (sqlx applies the query
/// in order, so the last one wins), decoded as sqlx decodes it.
pub fn last_query_value(url: &url::Url, keys: &[&str]) -> Option<String> {
    url.query_pairs()
        .filter(|(k, _)| keys.contains(&k.as_ref()))
        .map(|(_, v)| v.into_owned())
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_localhost_127_8_and_ipv6_loopback() {
        for ok in [
            "localhost",
            "LocalHost",
            "127.0.0.1",
            "127.3.2.1",
            "[::1]",
            "::1",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_loopback(ok), "{ok}");
        }
        for bad in [
            "",
            "db1",
            "10.0.0.1",
            "localhost.example.com",
            "localhost.",
            "128.0.0.1",
            "[::2]",
            "[::ffff:10.0.0.1]",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback(bad), "{bad}");
        }
    }

    #[test]
    fn the_last_query_value_wins_and_is_decoded() {
        let url =
            url::Url::parse("postgres://h/db?sslmode=disable&x=1&ssl-mode=verify%2Dfull").unwrap();
        assert_eq!(
            last_query_value(&url, &["sslmode", "ssl-mode"]).as_deref(),
            Some("verify-full")
        );
        assert_eq!(last_query_value(&url, &["nope"]), None);
    }
}
