//! The inventory file exactly as written: serde structs with `deny_unknown_fields`
//! and source spans. Only [`super::load`] sees these; everything else gets the
//! validated [`super::Inventory`].

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

pub type S<T> = Spanned<T>;

/// A YAML mapping kept in file order with the location of every key, so that
/// errors about a key (a bad account name, a duplicate) point at it.
#[derive(Debug)]
pub struct Entries<V>(pub Vec<(S<String>, V)>);

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of names to entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<S<String>, V>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
            // `accounts:` with nothing after it is an empty mapping.
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Entries(Vec::new()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Entries(Vec::new()))
            }
        }
        d.deserialize_any(V2(PhantomData))
    }
}

/// One value or a list of them (`store: vault` or `store: [vault, local]`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `tables: "*"` or `tables: [a, b]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ObjectList {
    Star(String),
    Names(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInventory {
    pub version: S<u32>,
    pub environment: Option<S<String>>,
    pub state: Option<S<String>>,
    pub timezone: Option<S<String>>,
    pub admin: Option<RawAdmin>,
    pub metrics: Option<RawMetrics>,
    pub audit: Option<RawAudit>,
    pub rotation: Option<RawRotation>,
    pub defaults: Option<RawDefaults>,
    pub prune: Option<S<bool>>,
    #[serde(default)]
    pub databases: Entries<RawDatabase>,
    #[serde(default)]
    pub stores: Entries<RawStore>,
    #[serde(default)]
    pub accounts: Entries<RawAccount>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub socket: Option<S<String>>,
    #[serde(default)]
    pub allow_uids: Vec<u32>,
    #[serde(default)]
    pub allow_gids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub schedule: Option<S<String>>,
    pub stale_after: Option<S<String>>,
    pub sample_every: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRotation {
    pub concurrency: Option<S<u32>>,
    pub retry_initial: Option<S<String>>,
    pub retry_max: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub schedule: Option<S<String>>,
    pub overlap: Option<S<String>>,
    pub expiry_margin: Option<S<String>>,
    pub max_lifetime: Option<S<String>>,
    pub strategy: Option<S<String>>,
    pub store: Option<S<OneOrMany<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub engine: S<String>,
    pub url: S<String>,
    pub password_file: Option<S<String>>,
    pub password_env: Option<S<String>>,
    pub publish: Option<RawPublish>,
    pub max_connections: Option<S<u32>>,
    /// MySQL/MariaDB: the host patterns logins are created for.
    pub hosts: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPublish {
    pub host: Option<S<String>>,
    pub port: Option<S<u16>>,
    pub dbname: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub kind: S<String>,
    // file
    pub dir: Option<S<String>>,
    pub mode: Option<S<String>>,
    // vault
    pub address: Option<S<String>>,
    pub mount: Option<S<String>>,
    pub namespace: Option<S<String>>,
    pub ca_file: Option<S<String>>,
    pub auth: Option<S<RawVaultAuth>>,
    // aws_secrets_manager
    pub region: Option<S<String>>,
    pub endpoint: Option<S<String>>,
    pub kms_key_id: Option<S<String>>,
}

/// `auth:` of a Vault store; which keys apply depends on `method`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVaultAuth {
    pub method: S<String>,
    // token
    pub token_file: Option<S<String>>,
    pub token_env: Option<S<String>>,
    pub token: Option<S<String>>,
    // approle
    pub role_id: Option<S<String>>,
    pub role_id_file: Option<S<String>>,
    pub secret_id_file: Option<S<String>>,
    // kubernetes
    pub role: Option<S<String>>,
    pub jwt_file: Option<S<String>>,
    // approle, kubernetes: where the auth method is mounted
    pub mount: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccount {
    pub database: S<String>,
    pub purpose: Option<S<String>>,
    pub owner: Option<S<String>>,
    pub strategy: Option<S<String>>,
    pub role: Option<S<String>>,
    pub adopt: Option<S<bool>>,
    pub schedule: Option<S<String>>,
    pub overlap: Option<S<String>>,
    pub expiry_margin: Option<S<String>>,
    pub lifetime: Option<S<String>>,
    pub max_lifetime: Option<S<String>>,
    #[serde(default)]
    pub grants: Vec<RawGrant>,
    #[serde(default)]
    pub member_of: Vec<S<String>>,
    #[serde(default)]
    pub settings: Entries<S<String>>,
    pub connection_limit: Option<S<i32>>,
    pub store: Option<S<OneOrMany<String>>>,
    pub path: Option<S<String>>,
    pub allow_ddl: Option<S<bool>>,
    pub revoke: Option<RawRevoke>,
    pub notify: Option<RawNotify>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    pub exec: Option<S<Vec<String>>>,
    pub signal: Option<RawSignal>,
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignal {
    pub pid_file: S<String>,
    pub signal: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRevoke {
    pub terminate_sessions: Option<S<bool>>,
    pub grace: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrant {
    pub schema: S<String>,
    pub tables: Option<S<ObjectList>>,
    pub sequences: Option<S<ObjectList>>,
    pub functions: Option<S<ObjectList>>,
    pub procedures: Option<S<ObjectList>>,
    pub privileges: S<Vec<S<String>>>,
    pub row_filter: Option<S<String>>,
}
