//! The `databases:` section: engine, URL (its TLS included), admin password,
//! MySQL hosts.

use serde_saphyr::Location;
use url::Url;

use super::super::raw::{RawDatabase, S};
use super::super::{Database, EngineKind, PasswordSource};
use super::{is_account_name, Validator, ACCOUNT_NAME_RULE};
use crate::engine::transport::{Exposure, Transport};
use crate::engine::{mysql, postgres};

impl Validator {
    pub(super) fn database(&mut self, name: &S<String>, db: RawDatabase) -> Option<Database> {
        if !is_account_name(&name.value) {
            self.error(
                &name.referenced,
                format!(
                    "database name {:?} must match {ACCOUNT_NAME_RULE}",
                    name.value
                ),
            );
        }
        let engine = match db.engine.value.as_str() {
            "postgres" | "postgresql" => Some(EngineKind::Postgres),
            "mysql" => Some(EngineKind::Mysql),
            "mariadb" => Some(EngineKind::Mariadb),
            other => {
                self.error(
                    &db.engine.referenced,
                    format!("unknown engine {other:?}; expected postgres, mysql or mariadb"),
                );
                self.unsupported.insert(name.value.clone());
                None
            }
        };
        let url = db.url.value.clone();
        let mysql = engine.is_some_and(EngineKind::is_mysql);
        let (schemes, want) = if mysql {
            (mysql::rules::URL_SCHEMES, mysql::rules::URL_FORM)
        } else {
            (postgres::rules::URL_SCHEMES, postgres::rules::URL_FORM)
        };
        let url_ok = schemes.iter().any(|s| url.starts_with(s));
        if engine.is_some() && !url_ok {
            // Name only the scheme: the rest of a URL may carry a password.
            let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("(none)");
            self.error(
                &db.url.referenced,
                format!("url: expected {want}, found a URL with scheme {scheme:?}"),
            );
        } else if url_has_password(&url) {
            self.policy(&db.url.referenced, format!("database {:?}: the url carries a password inline; use password_file or password_env", name.value));
        }
        if let (Some(engine), true) = (engine, url_ok) {
            self.url_tls(&name.value, engine, &url, db.url.referenced);
        }
        let hosts = match (&db.hosts, mysql) {
            // An unknown engine is reported already.
            (Some(_), false) if engine.is_none() => Vec::new(),
            (Some(h), false) => {
                self.error(
                    &h.referenced,
                    "`hosts` applies to engine mysql or mariadb only",
                );
                Vec::new()
            }
            (None, false) => Vec::new(),
            (None, true) => vec!["%".to_owned()],
            (Some(h), true) => {
                let mut out: Vec<String> = Vec::new();
                if h.value.is_empty() {
                    self.error(
                        &h.referenced,
                        "`hosts` lists no host; leave it out for [\"%\"]",
                    );
                }
                for host in &h.value {
                    if let Some(p) = mysql::rules::host_problem(&host.value) {
                        self.error(&host.referenced, format!("host {:?} {p}", host.value));
                    } else if out.contains(&host.value) {
                        self.error(
                            &host.referenced,
                            format!("host {:?} is listed twice", host.value),
                        );
                    } else {
                        out.push(host.value.clone());
                    }
                }
                out
            }
        };
        let password = match (&db.password_file, &db.password_env) {
            (Some(f), Some(_)) => {
                self.error(&f.referenced, "set password_file or password_env, not both");
                PasswordSource::None
            }
            (Some(f), None) => PasswordSource::File(self.secret_path(&f.value)),
            (None, Some(e)) => PasswordSource::Env(e.value.clone()),
            (None, None) => PasswordSource::None,
        };
        let (publish_host, publish_port, publish_dbname) = match db.publish {
            Some(p) => (
                p.host.map(|h| h.value),
                p.port.map(|p| p.value),
                p.dbname.map(|d| d.value),
            ),
            None => (None, None, None),
        };
        let max_connections = match db.max_connections {
            Some(m) if m.value == 0 => {
                self.error(&m.referenced, "max_connections must be at least 1");
                4
            }
            Some(m) => m.value,
            None => 4,
        };
        Some(Database {
            name: name.value.clone(),
            engine: engine?,
            url,
            password,
            publish_host,
            publish_port,
            publish_dbname,
            max_connections,
            hosts,
        })
    }
}

/// The TLS rules of one engine's URLs, from `engine/<engine>/rules.rs`.
struct TlsRules {
    /// The mode key as messages name it.
    mode_name: &'static str,
    mode_keys: &'static [&'static str],
    modes: &'static [&'static str],
    /// The modes as the error for an unknown one lists them.
    modes_shown: &'static str,
    ca_keys: &'static [&'static str],
    transport: fn(&Url) -> Transport,
    unverified_because: fn(Option<&str>) -> &'static str,
    fix: &'static str,
}

const POSTGRES_TLS: TlsRules = TlsRules {
    mode_name: "sslmode",
    mode_keys: postgres::rules::SSL_MODE_KEYS,
    modes: postgres::rules::SSL_MODES,
    modes_shown: "disable, allow, prefer, require, verify-ca, verify-full",
    ca_keys: postgres::rules::SSL_ROOT_CERT_KEYS,
    transport: postgres::rules::transport,
    unverified_because: postgres::rules::unverified_because,
    fix: postgres::rules::TLS_FIX,
};

const MYSQL_TLS: TlsRules = TlsRules {
    mode_name: "ssl-mode",
    mode_keys: mysql::rules::SSL_MODE_KEYS,
    modes: mysql::rules::SSL_MODES,
    modes_shown: "DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY",
    ca_keys: mysql::rules::SSL_CA_KEYS,
    transport: mysql::rules::transport,
    unverified_because: mysql::rules::unverified_because,
    fix: mysql::rules::TLS_FIX,
};

impl Validator {
    /// The URL's TLS: known modes, an absolute CA path, and the policy that a
    /// database on another host is reached only over verified TLS. Messages
    /// name the host and the mode, never the rest of the URL (it may carry a
    /// password).
    fn url_tls(&mut self, name: &str, engine: EngineKind, url: &str, at: Location) {
        let parsed = match Url::parse(url) {
            Ok(u) => u,
            Err(e) => {
                // `url::ParseError` names the problem, not the input.
                self.error(&at, format!("url: not a valid URL ({e})"));
                return;
            }
        };
        let rules = if engine.is_mysql() {
            &MYSQL_TLS
        } else {
            &POSTGRES_TLS
        };
        let mut unknown_mode = false;
        for (key, mode) in parsed.query_pairs() {
            if rules.mode_keys.contains(&key.as_ref())
                && !rules.modes.contains(&mode.to_ascii_lowercase().as_str())
            {
                unknown_mode = true;
                self.error(
                    &at,
                    format!(
                        "url: unknown {} {mode:?}; expected one of {}",
                        rules.mode_name, rules.modes_shown
                    ),
                );
            }
            if rules.ca_keys.contains(&key.as_ref())
                && !mode.starts_with("-----BEGIN")
                && std::path::Path::new(mode.as_ref()).is_relative()
            {
                self.warn(
                    &at,
                    format!("url: {key} {mode:?} is a relative path, which credrotd opens from its working directory (/ under systemd), not from the inventory's; write an absolute path"),
                );
            }
        }
        if unknown_mode {
            return;
        }
        match (rules.transport)(&parsed) {
            Transport::Local | Transport::Verified => {}
            Transport::Exposed(Exposure::NoHost) => self.policy(
                &at,
                format!(
                    "database {name:?}: the url names no host, so sqlx would take PGHOST or PGHOSTADDR from the environment or look for a local socket, and TLS is not verified; name the host in the url (a socket as host=/run/postgresql) or {}",
                    rules.fix
                ),
            ),
            Transport::Exposed(Exposure::Unverified { host, mode }) => self.policy(
                &at,
                format!(
                    "database {name:?}: the connection to {host:?} is not verified TLS: {}; {}",
                    (rules.unverified_because)(mode.as_deref()),
                    rules.fix
                ),
            ),
        }
    }
}

fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let in_userinfo = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let in_query = rest.split_once('?').is_some_and(|(_, q)| {
        q.split('&')
            .any(|kv| kv.split('=').next() == Some("password"))
    });
    in_userinfo || in_query
}
