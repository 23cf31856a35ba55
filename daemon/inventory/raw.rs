//! The inventory file exactly as written: serde structs with `deny_unknown_fields`
//! and source spans. Only [`super::load`] sees these; everything else gets the
//! validated [`super::Inventory`].

use std::fmt;
use std::marker::PhantomData;

use schemars::JsonSchema;
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

/// For the JSON Schema only: a duration as the parser takes it, `30m`,
/// `1h 30m`, `2d` (humantime), or `0`.
pub struct DurationText;

impl JsonSchema for DurationText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: `30m`, `1h 30m`, `2d`, or 0.",
            "type": ["string", "integer"]
        })
    }
}

/// For the JSON Schema only: a role setting's value (`work_mem: 64MB`,
/// `statement_timeout: 30000`).
pub struct SettingValue;

impl JsonSchema for SettingValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SettingValue".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": ["string", "number", "boolean"] })
    }
}

/// One value or a list of them (`store: vault` or `store: [vault, local]`).
#[derive(Debug, Deserialize, JsonSchema)]
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
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ObjectList {
    Star(String),
    Names(Vec<String>),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInventory {
    #[schemars(with = "u32")]
    pub version: S<u32>,
    #[schemars(with = "Option<String>")]
    pub environment: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub state: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub timezone: Option<S<String>>,
    pub admin: Option<RawAdmin>,
    pub metrics: Option<RawMetrics>,
    pub audit: Option<RawAudit>,
    pub rotation: Option<RawRotation>,
    pub defaults: Option<RawDefaults>,
    #[schemars(with = "Option<bool>")]
    pub prune: Option<S<bool>>,
    #[serde(default)]
    #[schemars(with = "std::collections::BTreeMap<String, RawDatabase>")]
    pub databases: Entries<RawDatabase>,
    #[serde(default)]
    #[schemars(with = "std::collections::BTreeMap<String, RawStore>")]
    pub stores: Entries<RawStore>,
    #[serde(default)]
    #[schemars(with = "std::collections::BTreeMap<String, RawAccount>")]
    pub accounts: Entries<RawAccount>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[schemars(with = "Option<String>")]
    pub socket: Option<S<String>>,
    #[serde(default)]
    pub allow_uids: Vec<u32>,
    #[serde(default)]
    pub allow_gids: Vec<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    #[schemars(with = "String")]
    pub listen: S<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    #[schemars(with = "Option<String>")]
    pub schedule: Option<S<String>>,
    #[schemars(with = "Option<DurationText>")]
    pub stale_after: Option<S<String>>,
    #[schemars(with = "Option<DurationText>")]
    pub sample_every: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRotation {
    #[schemars(with = "Option<u32>")]
    pub concurrency: Option<S<u32>>,
    #[schemars(with = "Option<DurationText>")]
    pub retry_initial: Option<S<String>>,
    #[schemars(with = "Option<DurationText>")]
    pub retry_max: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    #[schemars(with = "Option<String>")]
    pub schedule: Option<S<String>>,
    #[schemars(with = "Option<DurationText>")]
    pub overlap: Option<S<String>>,
    #[schemars(with = "Option<DurationText>")]
    pub expiry_margin: Option<S<String>>,
    #[schemars(with = "Option<DurationText>")]
    pub max_lifetime: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub strategy: Option<S<String>>,
    #[schemars(with = "Option<OneOrMany<String>>")]
    pub store: Option<S<OneOrMany<String>>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    #[schemars(with = "String")]
    pub engine: S<String>,
    #[schemars(with = "String")]
    pub url: S<String>,
    #[schemars(with = "Option<String>")]
    pub password_file: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub password_env: Option<S<String>>,
    pub publish: Option<RawPublish>,
    #[schemars(with = "Option<u32>")]
    pub max_connections: Option<S<u32>>,
    /// MySQL/MariaDB: the host patterns logins are created for.
    #[schemars(with = "Option<Vec<String>>")]
    pub hosts: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPublish {
    #[schemars(with = "Option<String>")]
    pub host: Option<S<String>>,
    #[schemars(with = "Option<u16>")]
    pub port: Option<S<u16>>,
    #[schemars(with = "Option<String>")]
    pub dbname: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    #[schemars(with = "String")]
    pub kind: S<String>,
    // file
    #[schemars(with = "Option<String>")]
    pub dir: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub mode: Option<S<String>>,
    // vault
    #[schemars(with = "Option<String>")]
    pub address: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub mount: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub namespace: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub ca_file: Option<S<String>>,
    #[schemars(with = "Option<RawVaultAuth>")]
    pub auth: Option<S<RawVaultAuth>>,
    // aws_secrets_manager
    #[schemars(with = "Option<String>")]
    pub region: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub endpoint: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub kms_key_id: Option<S<String>>,
}

/// `auth:` of a Vault store; which keys apply depends on `method`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawVaultAuth {
    #[schemars(with = "String")]
    pub method: S<String>,
    // token
    #[schemars(with = "Option<String>")]
    pub token_file: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub token_env: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub token: Option<S<String>>,
    // approle
    #[schemars(with = "Option<String>")]
    pub role_id: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub role_id_file: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub secret_id_file: Option<S<String>>,
    // kubernetes
    #[schemars(with = "Option<String>")]
    pub role: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub jwt_file: Option<S<String>>,
    // approle, kubernetes: where the auth method is mounted
    #[schemars(with = "Option<String>")]
    pub mount: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAccount {
    #[schemars(with = "String")]
    pub database: S<String>,
    #[schemars(with = "Option<String>")]
    pub purpose: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub owner: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub strategy: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub role: Option<S<String>>,
    #[schemars(with = "Option<bool>")]
    pub adopt: Option<S<bool>>,
    #[schemars(with = "Option<String>")]
    pub schedule: Option<S<String>>,
    #[schemars(with = "Option<DurationText>")]
    pub overlap: Option<S<String>>,
    #[schemars(with = "Option<DurationText>")]
    pub expiry_margin: Option<S<String>>,
    #[schemars(with = "Option<DurationText>")]
    pub lifetime: Option<S<String>>,
    #[schemars(with = "Option<DurationText>")]
    pub max_lifetime: Option<S<String>>,
    #[serde(default)]
    pub grants: Vec<RawGrant>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub member_of: Vec<S<String>>,
    #[serde(default)]
    #[schemars(with = "std::collections::BTreeMap<String, SettingValue>")]
    pub settings: Entries<S<String>>,
    #[schemars(with = "Option<i32>")]
    pub connection_limit: Option<S<i32>>,
    #[schemars(with = "Option<OneOrMany<String>>")]
    pub store: Option<S<OneOrMany<String>>>,
    #[schemars(with = "Option<String>")]
    pub path: Option<S<String>>,
    #[schemars(with = "Option<bool>")]
    pub allow_ddl: Option<S<bool>>,
    pub revoke: Option<RawRevoke>,
    pub notify: Option<RawNotify>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    #[schemars(with = "Option<Vec<String>>")]
    pub exec: Option<S<Vec<String>>>,
    pub signal: Option<RawSignal>,
    #[schemars(with = "Option<DurationText>")]
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSignal {
    #[schemars(with = "String")]
    pub pid_file: S<String>,
    #[schemars(with = "Option<String>")]
    pub signal: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRevoke {
    #[schemars(with = "Option<bool>")]
    pub terminate_sessions: Option<S<bool>>,
    #[schemars(with = "Option<DurationText>")]
    pub grace: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGrant {
    #[schemars(with = "String")]
    pub schema: S<String>,
    #[schemars(with = "Option<ObjectList>")]
    pub tables: Option<S<ObjectList>>,
    #[schemars(with = "Option<ObjectList>")]
    pub sequences: Option<S<ObjectList>>,
    #[schemars(with = "Option<ObjectList>")]
    pub functions: Option<S<ObjectList>>,
    #[schemars(with = "Option<ObjectList>")]
    pub procedures: Option<S<ObjectList>>,
    #[schemars(with = "Vec<String>")]
    pub privileges: S<Vec<S<String>>>,
    #[schemars(with = "Option<String>")]
    pub row_filter: Option<S<String>>,
}
