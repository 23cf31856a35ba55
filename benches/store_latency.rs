//! Benchmark: the time one rotation spends in each secret store (publish, plus
//! promote for two-phase stores), median and p90 over N rotations (default 100)
//! of one account, against the servers `benches/store_latency.sh` starts.

use std::time::{Duration, Instant};

use chrono::Utc;
use credrotd::engine::Endpoint;
use credrotd::inventory::{AwsConfig, TokenSource, VaultAuth, VaultConfig};
use credrotd::secret::Secret;
use credrotd::store::aws::AwsStore;
use credrotd::store::file::FileStore;
use credrotd::store::vault::VaultStore;
use credrotd::store::{Publication, Store};

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set; run benches/store_latency.sh"))
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() * 9 / 10])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: i64 = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let tag = format!("bench{:08x}", rand::random::<u32>());
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<Box<dyn Store>> = vec![
        Box::new(FileStore::new("file", dir.path().join("secrets"), 0o440)),
        Box::new(VaultStore::new(
            "vault",
            VaultConfig {
                address: env("CREDROTD_TEST_VAULT_ADDR"),
                mount: "secret".into(),
                namespace: None,
                ca_file: None,
                auth: VaultAuth::Token(TokenSource::Env("CREDROTD_TEST_VAULT_TOKEN".into())),
            },
        )),
        Box::new(AwsStore::new(
            "aws",
            AwsConfig {
                region: "eu-west-1".into(),
                endpoint: Some(env("CREDROTD_TEST_AWS_ENDPOINT")),
                kms_key_id: None,
            },
        )),
    ];
    let endpoint = Endpoint {
        engine: "postgres",
        host: "db.internal".into(),
        port: 5432,
        dbname: "orders".into(),
    };
    let path = format!("credrotd-bench/{tag}");
    println!("{n} rotations of one account per store; time per rotation in the store");
    println!("{:<6} {:>12} {:>12}", "store", "median", "p90");
    for store in &stores {
        // One warm-up rotation: login, client construction, secret creation.
        let mut times = Vec::new();
        for version in 0..=n {
            let password = Secret::generate();
            let now = Utc::now();
            let p = Publication {
                account: &tag,
                path: &path,
                version,
                username: &tag,
                password: &password,
                endpoint: &endpoint,
                issued_at: now,
                expires_at: now,
            };
            let t = Instant::now();
            store.publish(&p).await.unwrap();
            store.promote(&tag, &path, version).await.unwrap();
            if version > 0 {
                times.push(t.elapsed());
            }
        }
        let (median, p90) = stats(times);
        println!("{:<6} {:>10.2?} {:>10.2?}", store.name(), median, p90);
    }
}
