//! The `stores:` section: file, Vault (address, mounts, auth) and AWS Secrets
//! Manager.

use std::path::PathBuf;

use serde_saphyr::Location;

use super::super::raw::{RawStore, RawVaultAuth, S};
use super::super::{AwsConfig, StoreConfig, StoreKind, TokenSource, VaultAuth, VaultConfig};
use super::{is_account_name, Validator, ACCOUNT_NAME_RULE};
use crate::secret::Secret;

impl Validator {
    pub(super) fn store(&mut self, name: &S<String>, st: RawStore) -> Option<StoreConfig> {
        if !is_account_name(&name.value) {
            self.error(
                &name.referenced,
                format!("store name {:?} must match {ACCOUNT_NAME_RULE}", name.value),
            );
        }
        match st.kind.value.as_str() {
            "file" => {
                let Some(dir) = st.dir else {
                    self.error(
                        &st.kind.referenced,
                        format!("store {:?}: kind file needs `dir`", name.value),
                    );
                    return None;
                };
                let mode = match st.mode {
                    None => 0o440,
                    Some(m) => match u32::from_str_radix(m.value.trim_start_matches("0o"), 8) {
                        Ok(mode) if mode <= 0o777 => {
                            if mode & 0o007 != 0 {
                                self.policy(&m.referenced, format!("store {:?}: mode {:o} lets every local user read credentials", name.value, mode));
                            }
                            mode
                        }
                        _ => {
                            self.error(&m.referenced, format!("mode: expected an octal file mode such as \"0440\", found {:?}", m.value));
                            0o440
                        }
                    },
                };
                self.not_for_kind(
                    name,
                    "file",
                    &[
                        ("address", &st.address),
                        ("mount", &st.mount),
                        ("namespace", &st.namespace),
                        ("ca_file", &st.ca_file),
                        ("region", &st.region),
                        ("endpoint", &st.endpoint),
                        ("kms_key_id", &st.kms_key_id),
                    ],
                );
                if let Some(a) = &st.auth {
                    self.error(
                        &a.referenced,
                        format!("store {:?}: `auth` does not apply to kind file", name.value),
                    );
                }
                Some(StoreConfig {
                    name: name.value.clone(),
                    kind: StoreKind::File {
                        dir: self.path(&dir.value),
                        mode,
                    },
                })
            }
            "vault" => {
                self.not_for_kind(
                    name,
                    "vault",
                    &[
                        ("dir", &st.dir),
                        ("mode", &st.mode),
                        ("region", &st.region),
                        ("endpoint", &st.endpoint),
                        ("kms_key_id", &st.kms_key_id),
                    ],
                );
                let address = match &st.address {
                    None => {
                        self.error(
                            &st.kind.referenced,
                            format!(
                                "store {:?}: kind vault needs `address` (https://host:8200)",
                                name.value
                            ),
                        );
                        None
                    }
                    Some(a) => self.vault_address(name, a),
                };
                let mount = match &st.mount {
                    None => Some("secret".to_owned()),
                    Some(m) => self.mount_name(name, m, "mount"),
                };
                let auth = match st.auth {
                    None => {
                        self.error(&st.kind.referenced, format!("store {:?}: kind vault needs `auth` (method token, approle or kubernetes)", name.value));
                        None
                    }
                    Some(a) => self.vault_auth(name, a),
                };
                let namespace = st.namespace.map(|n| n.value.trim_matches('/').to_owned());
                let ca_file = st.ca_file.map(|c| self.path(&c.value));
                Some(StoreConfig {
                    name: name.value.clone(),
                    kind: StoreKind::Vault(VaultConfig {
                        address: address?,
                        mount: mount?,
                        namespace,
                        ca_file,
                        auth: auth?,
                    }),
                })
            }
            "aws_secrets_manager" => {
                self.not_for_kind(
                    name,
                    "aws_secrets_manager",
                    &[
                        ("dir", &st.dir),
                        ("mode", &st.mode),
                        ("address", &st.address),
                        ("mount", &st.mount),
                        ("namespace", &st.namespace),
                        ("ca_file", &st.ca_file),
                    ],
                );
                if let Some(a) = &st.auth {
                    self.error(&a.referenced, format!("store {:?}: `auth` does not apply to kind aws_secrets_manager (it uses the AWS SDK's default credential chain)", name.value));
                }
                let region = match &st.region {
                    None => {
                        self.error(&st.kind.referenced, format!("store {:?}: kind aws_secrets_manager needs `region` (e.g. eu-west-1)", name.value));
                        None
                    }
                    Some(r) if !is_aws_region(&r.value) => {
                        self.error(&r.referenced, format!("store {:?}: region {:?} is not an AWS region name such as eu-west-1", name.value, r.value));
                        None
                    }
                    Some(r) => Some(r.value.clone()),
                };
                let endpoint = match &st.endpoint {
                    Some(e)
                        if !(e.value.starts_with("https://") || e.value.starts_with("http://")) =>
                    {
                        self.error(
                            &e.referenced,
                            format!(
                                "store {:?}: endpoint must be an http:// or https:// URL",
                                name.value
                            ),
                        );
                        None
                    }
                    Some(e) => {
                        if e.value.starts_with("http://") && !is_loopback_url(&e.value) {
                            self.policy(&e.referenced, format!("store {:?}: endpoint {:?} is plain http to another host; use https", name.value, e.value));
                        }
                        Some(e.value.clone())
                    }
                    None => None,
                };
                let kms_key_id = match &st.kms_key_id {
                    Some(k) if k.value.trim().is_empty() => {
                        self.error(
                            &k.referenced,
                            format!("store {:?}: kms_key_id is empty", name.value),
                        );
                        None
                    }
                    Some(k) => Some(k.value.clone()),
                    None => None,
                };
                Some(StoreConfig {
                    name: name.value.clone(),
                    kind: StoreKind::Aws(AwsConfig {
                        region: region?,
                        endpoint,
                        kms_key_id,
                    }),
                })
            }
            other => {
                self.error(
                    &st.kind.referenced,
                    format!(
                        "unknown store kind {other:?}; expected file, vault or aws_secrets_manager"
                    ),
                );
                None
            }
        }
    }

    /// Reports keys that do not apply to a store kind.
    fn not_for_kind(&mut self, name: &S<String>, kind: &str, keys: &[(&str, &Option<S<String>>)]) {
        for (key, val) in keys {
            if let Some(v) = val {
                self.error(
                    &v.referenced,
                    format!(
                        "store {:?}: `{key}` does not apply to kind {kind}",
                        name.value
                    ),
                );
            }
        }
    }

    fn vault_address(&mut self, name: &S<String>, a: &S<String>) -> Option<String> {
        let v = a.value.trim_end_matches('/');
        if !(v.starts_with("https://") || v.starts_with("http://"))
            || v.contains('@')
            || url::Url::parse(v).is_err()
        {
            self.error(&a.referenced, format!("store {:?}: address must be an http:// or https:// URL without credentials, such as https://vault:8200", name.value));
            return None;
        }
        if v.starts_with("http://") && !is_loopback_url(v) {
            self.policy(
                &a.referenced,
                format!(
                    "store {:?}: address {v:?} sends the Vault token in plain text; use https",
                    name.value
                ),
            );
        }
        Some(v.to_owned())
    }

    fn mount_name(&mut self, name: &S<String>, m: &S<String>, what: &str) -> Option<String> {
        let v = m.value.trim_matches('/');
        if v.is_empty()
            || v.contains("..")
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            self.error(
                &m.referenced,
                format!(
                    "store {:?}: {what} {:?} must be a Vault mount path such as secret",
                    name.value, m.value
                ),
            );
            return None;
        }
        Some(v.to_owned())
    }

    /// A secret read by the store itself: from a file or the environment, or
    /// inline outside production.
    fn token_source(
        &mut self,
        name: &S<String>,
        at: &Location,
        what: &str,
        file: Option<S<String>>,
        env: Option<S<String>>,
        inline: Option<S<String>>,
    ) -> Option<TokenSource> {
        match (file, env, inline) {
            (Some(f), None, None) => Some(TokenSource::File(self.path(&f.value))),
            (None, Some(e), None) => Some(TokenSource::Env(e.value)),
            (None, None, Some(i)) => {
                self.policy(
                    &i.referenced,
                    format!(
                        "store {:?}: the {what} is written inline; use {what}_file or {what}_env",
                        name.value
                    ),
                );
                Some(TokenSource::Inline(Secret::new(i.value)))
            }
            (None, None, None) => {
                self.error(
                    at,
                    format!(
                        "store {:?}: auth needs {what}_file or {what}_env",
                        name.value
                    ),
                );
                None
            }
            (f, e, i) => {
                let at = f
                    .map(|x| x.referenced)
                    .or(e.map(|x| x.referenced))
                    .or(i.map(|x| x.referenced))
                    .unwrap_or(*at);
                self.error(
                    &at,
                    format!(
                        "store {:?}: set only one of {what}_file, {what}_env and {what}",
                        name.value
                    ),
                );
                None
            }
        }
    }

    fn vault_auth(&mut self, name: &S<String>, auth: S<RawVaultAuth>) -> Option<VaultAuth> {
        let at = auth.referenced;
        let a = auth.value;
        let method = a.method.value.clone();
        let mut stray: Vec<(&str, Option<S<String>>)> = Vec::new();
        let out = match method.as_str() {
            "token" => {
                stray.extend([
                    ("role_id", a.role_id),
                    ("role_id_file", a.role_id_file),
                    ("secret_id_file", a.secret_id_file),
                    ("role", a.role),
                    ("jwt_file", a.jwt_file),
                    ("mount", a.mount),
                ]);
                self.token_source(name, &at, "token", a.token_file, a.token_env, a.token)
                    .map(VaultAuth::Token)
            }
            "approle" => {
                stray.extend([
                    ("token_file", a.token_file),
                    ("token_env", a.token_env),
                    ("token", a.token),
                    ("role", a.role),
                    ("jwt_file", a.jwt_file),
                ]);
                let role_id = match (a.role_id_file, a.role_id) {
                    (Some(f), None) => Some(TokenSource::File(self.path(&f.value))),
                    // A role id is an identifier, not a secret: inline is fine.
                    (None, Some(r)) => Some(TokenSource::Inline(Secret::new(r.value))),
                    (Some(f), Some(_)) => {
                        self.error(
                            &f.referenced,
                            format!(
                                "store {:?}: set role_id_file or role_id, not both",
                                name.value
                            ),
                        );
                        None
                    }
                    (None, None) => {
                        self.error(
                            &at,
                            format!(
                                "store {:?}: auth method approle needs role_id_file (or role_id)",
                                name.value
                            ),
                        );
                        None
                    }
                };
                let secret_id_file = match a.secret_id_file {
                    Some(f) => Some(self.path(&f.value)),
                    None => {
                        self.error(
                            &at,
                            format!(
                                "store {:?}: auth method approle needs secret_id_file",
                                name.value
                            ),
                        );
                        None
                    }
                };
                let mount = match &a.mount {
                    Some(m) => self.mount_name(name, m, "auth mount"),
                    None => Some("approle".to_owned()),
                };
                match (role_id, secret_id_file, mount) {
                    (Some(role_id), Some(secret_id_file), Some(mount)) => {
                        Some(VaultAuth::AppRole {
                            role_id,
                            secret_id_file,
                            mount,
                        })
                    }
                    _ => None,
                }
            }
            "kubernetes" => {
                stray.extend([
                    ("token_file", a.token_file),
                    ("token_env", a.token_env),
                    ("token", a.token),
                    ("role_id", a.role_id),
                    ("role_id_file", a.role_id_file),
                    ("secret_id_file", a.secret_id_file),
                ]);
                let role = match a.role {
                    Some(r) if !r.value.trim().is_empty() => Some(r.value),
                    Some(r) => {
                        self.error(
                            &r.referenced,
                            format!("store {:?}: auth role is empty", name.value),
                        );
                        None
                    }
                    None => {
                        self.error(
                            &at,
                            format!(
                                "store {:?}: auth method kubernetes needs `role`",
                                name.value
                            ),
                        );
                        None
                    }
                };
                let jwt_file = a.jwt_file.map(|f| self.path(&f.value)).unwrap_or_else(|| {
                    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
                });
                let mount = match &a.mount {
                    Some(m) => self.mount_name(name, m, "auth mount"),
                    None => Some("kubernetes".to_owned()),
                };
                match (role, mount) {
                    (Some(role), Some(mount)) => Some(VaultAuth::Kubernetes {
                        role,
                        jwt_file,
                        mount,
                    }),
                    _ => None,
                }
            }
            other => {
                self.error(&a.method.referenced, format!("store {:?}: unknown auth method {other:?}; expected token, approle or kubernetes", name.value));
                return None;
            }
        };
        for (key, v) in stray {
            if let Some(v) = v {
                self.error(
                    &v.referenced,
                    format!(
                        "store {:?}: `{key}` does not apply to auth method {method}",
                        name.value
                    ),
                );
            }
        }
        out
    }
}

/// `http://localhost...`, `http://127.x...` or `http://[::1]...`.
fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

/// `eu-west-1`, `us-gov-west-1`, `cn-north-1`: lowercase words and a number.
fn is_aws_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
}
