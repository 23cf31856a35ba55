//! The `databases:` section: engine, URL, admin password, MySQL hosts.

use super::super::raw::{RawDatabase, S};
use super::super::{Database, EngineKind, PasswordSource};
use super::{is_account_name, Validator, ACCOUNT_NAME_RULE};
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
        if mysql {
            for mode in url_query_values(&url, mysql::rules::SSL_MODE_KEYS) {
                if !mysql::rules::SSL_MODES.contains(&mode.to_ascii_lowercase().as_str()) {
                    self.error(&db.url.referenced, format!("url: unknown ssl-mode {mode:?}; expected one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY"));
                }
            }
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

/// The values of the keys `keys` in a URL's query string, in order.
fn url_query_values<'a>(url: &'a str, keys: &[&str]) -> Vec<&'a str> {
    let Some((_, q)) = url.split_once('?') else {
        return Vec::new();
    };
    q.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            keys.contains(&k).then_some(v)
        })
        .collect()
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
