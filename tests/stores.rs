//! The Vault/OpenBao and AWS Secrets Manager stores against real servers (OpenBao
//! dev server and moto, started by `./scripts/test`), and the saga publishing to
//! both of them with a real PostgreSQL that checks passwords.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use common::{assert_no_secret, TestDb};
use credrotd::clock::{SharedClock, SystemClock};
use credrotd::engine::Endpoint;
use credrotd::inventory::{AwsConfig, TokenSource, VaultAuth, VaultConfig};
use credrotd::ledger::CredState;
use credrotd::rotation;
use credrotd::secret::Secret;
use credrotd::store::aws::{request_token, AwsStore};
use credrotd::store::vault::VaultStore;
use credrotd::store::{Publication, Store, StoreError};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set. Run the suite with ./scripts/test, which installs OpenBao and \
             moto into .venv and starts them."
        )
    })
}

fn vault_addr() -> String {
    env("CREDROTD_TEST_VAULT_ADDR")
}

fn root_token() -> String {
    env("CREDROTD_TEST_VAULT_TOKEN")
}

fn aws_endpoint() -> String {
    env("CREDROTD_TEST_AWS_ENDPOINT")
}

fn tag() -> String {
    format!("t{:08x}", common::rand_u32())
}

/// A Vault client with the dev server's root token, for setting up and looking.
fn root() -> VaultClient {
    let _ = rustls::crypto::ring::default_provider().install_default();
    VaultClient::new(
        VaultClientSettingsBuilder::default()
            .address(vault_addr())
            .token(root_token())
            .build()
            .unwrap(),
    )
    .unwrap()
}

fn vault_config(auth: VaultAuth) -> VaultConfig {
    VaultConfig {
        address: vault_addr(),
        mount: "secret".into(),
        namespace: None,
        ca_file: None,
        auth,
    }
}

/// A token with a policy that may write only under `secret/<prefix>`.
async fn scoped_token(root: &VaultClient, prefix: &str) -> String {
    let policy = format!(
        "path \"secret/data/{prefix}/*\" {{ capabilities = [\"create\", \"read\", \"update\"] }}\n\
         path \"secret/metadata/{prefix}/*\" {{ capabilities = [\"create\", \"read\", \"update\"] }}\n\
         path \"secret/delete/{prefix}/*\" {{ capabilities = [\"update\"] }}\n"
    );
    vaultrs::sys::policy::set(root, prefix, &policy)
        .await
        .unwrap();
    let mut req = vaultrs::api::token::requests::CreateTokenRequest::builder();
    req.policies(vec![prefix.to_owned()]).ttl("1h");
    vaultrs::token::new(root, Some(&mut req))
        .await
        .unwrap()
        .client_token
}

fn endpoint() -> Endpoint {
    Endpoint {
        engine: "postgres",
        host: "db.internal".into(),
        port: 5432,
        dbname: "orders".into(),
    }
}

fn publication<'a>(
    account: &'a str,
    path: &'a str,
    version: i64,
    password: &'a Secret,
    endpoint: &'a Endpoint,
) -> Publication<'a> {
    let now = Utc::now();
    Publication {
        account,
        path,
        version,
        username: account,
        password,
        endpoint,
        issued_at: now,
        expires_at: now + chrono::Duration::hours(2),
    }
}

async fn vault_cleanup(root: &VaultClient, path: &str) {
    let _ = vaultrs::kv2::delete_metadata(root, "secret", path).await;
}

#[tokio::test]
async fn vault_token_auth_writes_versions_with_custom_metadata_and_reverts() {
    let root = root();
    let t = tag();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, scoped_token(&root, &t).await).unwrap();
    let store = VaultStore::new(
        "vault",
        vault_config(VaultAuth::Token(TokenSource::File(token_file))),
    );
    store.check().await.expect("check with a working token");
    let path = format!("{t}/orders/etl");
    let ep = endpoint();
    let (pw1, pw2) = (Secret::generate(), Secret::generate());

    assert_eq!(store.current_version("etl", &path).await.unwrap(), None);
    store
        .publish(&publication("etl", &path, 1, &pw1, &ep))
        .await
        .unwrap();
    let undo2 = store
        .publish(&publication("etl", &path, 2, &pw2, &ep))
        .await
        .unwrap();
    // Publishing the same version again writes nothing.
    let again = store
        .publish(&publication("etl", &path, 2, &pw2, &ep))
        .await
        .unwrap();
    assert!(again.written.is_none());
    assert_eq!(store.current_version("etl", &path).await.unwrap(), Some(2));

    let meta = vaultrs::kv2::read_metadata(&root, "secret", &path)
        .await
        .unwrap();
    assert_eq!(meta.current_version, 2, "one KV version per rotation");
    let custom = meta.custom_metadata.unwrap();
    assert_eq!(custom["account"], "etl");
    assert_eq!(custom["version"], "2");
    assert!(custom["expires_at"].ends_with('Z'));
    let doc: HashMap<String, serde_json::Value> =
        vaultrs::kv2::read(&root, "secret", &path).await.unwrap();
    assert_eq!(doc["password"], pw2.expose());
    for key in [
        "engine",
        "host",
        "port",
        "dbname",
        "username",
        "url",
        "issued_at",
    ] {
        assert!(doc.contains_key(key), "payload lacks {key}");
    }

    // Revert writes the previous document back as a new version.
    store.revert(undo2).await.unwrap();
    assert_eq!(store.current_version("etl", &path).await.unwrap(), Some(1));
    let meta = vaultrs::kv2::read_metadata(&root, "secret", &path)
        .await
        .unwrap();
    assert_eq!(meta.current_version, 3);
    assert_eq!(meta.custom_metadata.unwrap()["version"], "1");

    // Reverting the very first publish deletes it.
    let path2 = format!("{t}/orders/first");
    let undo = store
        .publish(&publication("first", &path2, 1, &pw1, &ep))
        .await
        .unwrap();
    store.revert(undo).await.unwrap();
    assert_eq!(store.current_version("first", &path2).await.unwrap(), None);

    vault_cleanup(&root, &path).await;
    vault_cleanup(&root, &path2).await;
    let _ = vaultrs::sys::policy::delete(&root, &t).await;
}

#[tokio::test]
async fn vault_check_and_set_refuses_to_undo_over_another_writer() {
    let root = root();
    let t = tag();
    let store = VaultStore::new(
        "vault",
        vault_config(VaultAuth::Token(TokenSource::Inline(Secret::new(
            root_token(),
        )))),
    );
    let path = format!("{t}/cas");
    let ep = endpoint();
    let pw = Secret::generate();
    let undo = store
        .publish(&publication("cas", &path, 1, &pw, &ep))
        .await
        .unwrap();
    // Someone else writes a version after ours.
    let mut other = HashMap::new();
    other.insert("version", 99);
    vaultrs::kv2::set(&root, "secret", &path, &other)
        .await
        .unwrap();
    let err = store.revert(undo).await.expect_err("cas must refuse");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("store vault") && msg.contains(&path), "{msg}");
    // The other writer's version is untouched.
    assert_eq!(store.current_version("cas", &path).await.unwrap(), Some(99));
    vault_cleanup(&root, &path).await;
}

#[tokio::test]
async fn vault_approle_auth_publishes() {
    let root = root();
    let t = tag();
    let mount = format!("approle-{t}");
    vaultrs::sys::auth::enable(&root, &mount, "approle", None)
        .await
        .unwrap();
    let _ = scoped_token(&root, &t).await; // creates the policy named `t`
    let mut role = vaultrs::api::auth::approle::requests::SetAppRoleRequest::builder();
    role.token_policies(vec![t.clone()]).token_ttl("10m");
    vaultrs::auth::approle::role::set(&root, &mount, "credrotd", Some(&mut role))
        .await
        .unwrap();
    let role_id = vaultrs::auth::approle::role::read_id(&root, &mount, "credrotd")
        .await
        .unwrap()
        .role_id;
    let secret_id = vaultrs::auth::approle::role::secret::generate(&root, &mount, "credrotd", None)
        .await
        .unwrap()
        .secret_id;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("role_id"), &role_id).unwrap();
    std::fs::write(dir.path().join("secret_id"), &secret_id).unwrap();
    let store = VaultStore::new(
        "vault",
        vault_config(VaultAuth::AppRole {
            role_id: TokenSource::File(dir.path().join("role_id")),
            secret_id_file: dir.path().join("secret_id"),
            mount: mount.clone(),
        }),
    );
    store.check().await.expect("approle login");
    let path = format!("{t}/approle/acct");
    let ep = endpoint();
    let pw = Secret::generate();
    store
        .publish(&publication("acct", &path, 5, &pw, &ep))
        .await
        .unwrap();
    assert_eq!(store.current_version("acct", &path).await.unwrap(), Some(5));
    // Outside its policy the AppRole token is refused, with a clear error.
    let err = store
        .publish(&publication("acct", "elsewhere/acct", 6, &pw, &ep))
        .await
        .expect_err("outside the policy");
    let msg = err.to_string();
    assert!(
        msg.contains("permission denied") && msg.contains("secret/elsewhere/acct"),
        "{msg}"
    );
    assert_no_secret("a store error", msg.as_bytes(), &[pw.expose().to_owned()]);

    vault_cleanup(&root, &path).await;
    let _ = vaultrs::sys::auth::disable(&root, &mount).await;
    let _ = vaultrs::sys::policy::delete(&root, &t).await;
}

#[tokio::test]
async fn vault_token_revoked_mid_run_gives_a_clear_error() {
    let root = root();
    let t = tag();
    let token = scoped_token(&root, &t).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), &token).unwrap();
    let store = VaultStore::new(
        "vault",
        vault_config(VaultAuth::Token(TokenSource::File(
            dir.path().join("token"),
        ))),
    );
    let path = format!("{t}/revoked/acct");
    let ep = endpoint();
    let (pw1, pw2) = (Secret::generate(), Secret::generate());
    store
        .publish(&publication("acct", &path, 1, &pw1, &ep))
        .await
        .unwrap();
    vaultrs::token::revoke(&root, &token).await.unwrap();
    let err = store
        .publish(&publication("acct", &path, 2, &pw2, &ep))
        .await
        .expect_err("a revoked token must fail");
    let msg = format!("{err} / {err:?}");
    assert!(msg.contains("store vault"), "{msg}");
    assert!(msg.contains(&format!("secret/{t}/revoked/acct")), "{msg}");
    assert!(msg.contains("permission denied"), "{msg}");
    assert_no_secret(
        "a store error",
        msg.as_bytes(),
        &[
            pw1.expose().to_owned(),
            pw2.expose().to_owned(),
            token.clone(),
        ],
    );
    // The store forgot the session: the next call tries to log in again and
    // says the token does not work.
    let err = store.check().await.expect_err("still revoked");
    assert!(
        err.to_string().contains("cannot authenticate with token"),
        "{err}"
    );
    vault_cleanup(&root, &path).await;
    let _ = vaultrs::sys::policy::delete(&root, &t).await;
}

// ---- AWS Secrets Manager (moto) ----

fn aws_store(endpoint: String) -> AwsStore {
    AwsStore::new(
        "aws",
        AwsConfig {
            region: "eu-west-1".into(),
            endpoint: Some(endpoint),
            kms_key_id: None,
        },
    )
}

async fn sm() -> aws_sdk_secretsmanager::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("eu-west-1"))
        .endpoint_url(aws_endpoint())
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .load()
        .await;
    aws_sdk_secretsmanager::Client::new(&conf)
}

/// Version id → staging labels (sorted), only versions that have labels.
async fn labels(sm: &aws_sdk_secretsmanager::Client, name: &str) -> HashMap<String, Vec<String>> {
    let d = sm.describe_secret().secret_id(name).send().await.unwrap();
    d.version_ids_to_stages()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, mut v)| {
            v.sort();
            (k, v)
        })
        .collect()
}

async fn aws_cleanup(sm: &aws_sdk_secretsmanager::Client, name: &str) {
    let _ = sm
        .delete_secret()
        .secret_id(name)
        .force_delete_without_recovery(true)
        .send()
        .await;
}

#[tokio::test]
async fn aws_creates_stages_pending_and_promotes_with_previous() {
    let sm = sm().await;
    let store = aws_store(aws_endpoint());
    store.check().await.expect("moto answers");
    let t = tag();
    let name = format!("credrotd/{t}/etl");
    let ep = endpoint();
    let (pw1, pw2) = (Secret::generate(), Secret::generate());
    let v1 = request_token("etl", &name, 1);
    let v2 = request_token("etl", &name, 2);

    // First rotation: the secret is created; AWS makes the first version of a
    // secret AWSCURRENT by itself, and the promote removes AWSPENDING.
    store
        .publish(&publication("etl", &name, 1, &pw1, &ep))
        .await
        .unwrap();
    assert_eq!(
        labels(&sm, &name).await,
        HashMap::from([(
            v1.clone(),
            vec!["AWSCURRENT".to_owned(), "AWSPENDING".to_owned()]
        )])
    );
    store.promote("etl", &name, 1).await.unwrap();
    assert_eq!(
        labels(&sm, &name).await,
        HashMap::from([(v1.clone(), vec!["AWSCURRENT".to_owned()])])
    );
    assert_eq!(store.current_version("etl", &name).await.unwrap(), Some(1));

    // Second rotation: AWSCURRENT moves, AWS keeps AWSPREVIOUS, no AWSPENDING.
    store
        .publish(&publication("etl", &name, 2, &pw2, &ep))
        .await
        .unwrap();
    assert_eq!(store.current_version("etl", &name).await.unwrap(), Some(1));
    assert_eq!(
        labels(&sm, &name).await,
        HashMap::from([
            (v1.clone(), vec!["AWSCURRENT".to_owned()]),
            (v2.clone(), vec!["AWSPENDING".to_owned()]),
        ])
    );
    store.promote("etl", &name, 2).await.unwrap();
    assert_eq!(
        labels(&sm, &name).await,
        HashMap::from([
            (v1.clone(), vec!["AWSPREVIOUS".to_owned()]),
            (v2.clone(), vec!["AWSCURRENT".to_owned()]),
        ])
    );
    // Asks for AWSCURRENT by name: moto's default (no stage) does not follow
    // UpdateSecretVersionStage, real AWS's does.
    let cur = sm
        .get_secret_value()
        .secret_id(&name)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(cur.secret_string().unwrap()).unwrap();
    assert_eq!(doc["password"], pw2.expose());
    assert_eq!(doc["version"], 2);
    aws_cleanup(&sm, &name).await;
}

#[tokio::test]
async fn aws_retry_of_the_same_version_is_a_no_op_and_revert_leaves_no_pending() {
    let sm = sm().await;
    let store = aws_store(aws_endpoint());
    let t = tag();
    let name = format!("credrotd/{t}/retry");
    let ep = endpoint();
    let (pw1, pw2) = (Secret::generate(), Secret::generate());
    store
        .publish(&publication("retry", &name, 1, &pw1, &ep))
        .await
        .unwrap();
    store
        .publish(&publication("retry", &name, 1, &pw1, &ep))
        .await
        .unwrap();
    store.promote("retry", &name, 1).await.unwrap();
    store.promote("retry", &name, 1).await.unwrap();
    // A publish retried after the promote must not stage the current version.
    store
        .publish(&publication("retry", &name, 1, &pw1, &ep))
        .await
        .unwrap();
    let versions = sm
        .list_secret_version_ids()
        .secret_id(&name)
        .send()
        .await
        .unwrap();
    assert_eq!(
        versions.versions().len(),
        1,
        "one AWS version per credential version"
    );
    assert_eq!(
        labels(&sm, &name).await,
        HashMap::from([(
            request_token("retry", &name, 1),
            vec!["AWSCURRENT".to_owned()]
        )])
    );

    // A publish reverted before its promote leaves no AWSPENDING behind.
    let undo = store
        .publish(&publication("retry", &name, 2, &pw2, &ep))
        .await
        .unwrap();
    store.revert(undo).await.unwrap();
    let l = labels(&sm, &name).await;
    assert!(!l.values().flatten().any(|s| s == "AWSPENDING"), "{l:?}");
    assert_eq!(
        store.current_version("retry", &name).await.unwrap(),
        Some(1)
    );
    // Reverting the first publish of a new secret deletes it again.
    let fresh = format!("credrotd/{t}/fresh");
    let undo = store
        .publish(&publication("fresh", &fresh, 1, &pw1, &ep))
        .await
        .unwrap();
    store.revert(undo).await.unwrap();
    assert_eq!(store.current_version("fresh", &fresh).await.unwrap(), None);
    // So does a discard during recovery.
    store
        .publish(&publication("retry", &name, 3, &pw2, &ep))
        .await
        .unwrap();
    store.discard("retry", &name, 3).await.unwrap();
    let l = labels(&sm, &name).await;
    assert!(!l.values().flatten().any(|s| s == "AWSPENDING"), "{l:?}");
    aws_cleanup(&sm, &name).await;
}

#[tokio::test]
async fn aws_store_that_is_down_gives_a_clear_error() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let store = aws_store(format!("http://127.0.0.1:{port}"));
    let ep = endpoint();
    let pw = Secret::generate();
    let started = std::time::Instant::now();
    let err = store
        .publish(&publication("down", "credrotd/down/acct", 1, &pw, &ep))
        .await
        .expect_err("nothing listens there");
    let msg = err.to_string();
    assert!(
        msg.contains("store aws") && msg.contains("credrotd/down/acct"),
        "{msg}"
    );
    assert!(
        msg.to_lowercase().contains("connect") || msg.contains("dispatch"),
        "{msg}"
    );
    assert_no_secret(
        "a store error",
        format!("{msg} {err:?}").as_bytes(),
        &[pw.expose().to_owned()],
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "fails fast"
    );
    assert!(store.check().await.is_err());
}

// ---- End to end: the saga, PostgreSQL, both stores ----

fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// An inventory with a Vault store (token from `token_file`) and an AWS store at
/// `aws_endpoint`, and one account published to both.
fn inventory(
    db: &TestDb,
    token_file: &std::path::Path,
    aws_endpoint: &str,
    account: &str,
    path: &str,
) -> String {
    format!(
        "version: 1\nenvironment: development\nstate: sqlite://{ledger}\n\
         defaults: {{ schedule: \"0 0 3 * * *\", overlap: 1h }}\n\
         databases:\n  main:\n    engine: postgres\n    url: {url}\n    password_file: {pw}\n\
         stores:\n  vault: {{ kind: vault, address: \"{vault}\", auth: {{ method: token, token_file: {token} }} }}\n  \
         aws: {{ kind: aws_secrets_manager, region: eu-west-1, endpoint: \"{aws}\" }}\n\
         accounts:\n  {account}:\n    database: main\n    store: [vault, aws]\n    path: {path}\n    grants:\n      - {{ schema: public, privileges: [USAGE] }}\n",
        ledger = db.ledger_path().display(),
        url = db.url,
        pw = db.password_file.display(),
        vault = vault_addr(),
        token = token_file.display(),
        aws = aws_endpoint,
    )
}

async fn context(db: &TestDb, yaml: &str) -> rotation::Context {
    let p = db.dir.path().join("inventory.yaml");
    std::fs::write(&p, yaml).unwrap();
    let inventory = credrotd::inventory::load(&p)
        .unwrap_or_else(|e| panic!("{e}"))
        .inventory;
    let ledger = credrotd::ledger::Ledger::open(&inventory.state)
        .await
        .unwrap();
    rotation::Context {
        engines: credrotd::engine::build(&inventory).unwrap(),
        stores: credrotd::store::build(&inventory),
        inventory: Arc::new(inventory),
        ledger,
        clock: system(),
        take_over: Default::default(),
        crash_after: None,
    }
}

/// Username, password and version from a document.
fn creds(doc: &serde_json::Value) -> (String, Secret, i64) {
    (
        doc["username"].as_str().unwrap().to_owned(),
        Secret::new(doc["password"].as_str().unwrap().to_owned()),
        doc["version"].as_i64().unwrap(),
    )
}

async fn from_vault(root: &VaultClient, path: &str) -> serde_json::Value {
    vaultrs::kv2::read(root, "secret", path).await.unwrap()
}

async fn from_aws(sm: &aws_sdk_secretsmanager::Client, name: &str) -> serde_json::Value {
    let v = sm
        .get_secret_value()
        .secret_id(name)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap();
    serde_json::from_str(v.secret_string().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_publishes_to_vault_and_aws_and_each_logs_in() {
    let db = TestDb::new().await;
    let root = root();
    let sm = sm().await;
    let account = db.name("both");
    let path = format!("credrotd/{}/both", db.tag);
    let token_file = db.dir.path().join("vault-token");
    std::fs::write(&token_file, scoped_token(&root, "credrotd").await).unwrap();
    let ctx = context(
        &db,
        &inventory(&db, &token_file, &aws_endpoint(), &account, &path),
    )
    .await;
    let acc = ctx.account(&account).unwrap().clone();

    for round in 1..=2 {
        let r = rotation::rotate(&ctx, &acc).await.unwrap();
        let (vu, vp, vv) = creds(&from_vault(&root, &path).await);
        let (au, ap, av) = creds(&from_aws(&sm, &path).await);
        assert_eq!(
            (vv, av),
            (r.version, r.version),
            "round {round}: both stores hold it"
        );
        assert_eq!(vu, au);
        assert_eq!(vp.expose(), ap.expose());
        for (what, u, p) in [("vault", &vu, &vp), ("aws", &au, &ap)] {
            let mut c = db
                .login(u, p.expose())
                .await
                .unwrap_or_else(|e| panic!("round {round}: login with what {what} holds: {e}"));
            sqlx::query("SELECT 1").execute(&mut c).await.unwrap();
        }
        let cred = ctx.ledger.live(&account).await.unwrap();
        let cur = cred.iter().find(|c| c.state == CredState::Current).unwrap();
        assert_eq!(
            cur.stores,
            ["aws", "vault"],
            "the ledger records the holders"
        );
    }
    let l = labels(&sm, &path).await;
    assert_eq!(l.len(), 2, "{l:?}");
    assert!(!l.values().flatten().any(|s| s == "AWSPENDING"), "{l:?}");
    vault_cleanup(&root, &path).await;
    aws_cleanup(&sm, &path).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_one_store_refuses_nothing_is_promoted_anywhere() {
    let db = TestDb::new().await;
    let root = root();
    let sm = sm().await;
    let account = db.name("half");
    let path = format!("credrotd/{}/half", db.tag);
    let token = scoped_token(&root, "credrotd").await;
    let token_file = db.dir.path().join("vault-token");
    std::fs::write(&token_file, &token).unwrap();
    let ctx = context(
        &db,
        &inventory(&db, &token_file, &aws_endpoint(), &account, &path),
    )
    .await;
    let acc = ctx.account(&account).unwrap().clone();
    let first = rotation::rotate(&ctx, &acc).await.unwrap();
    let (user1, pw1, _) = creds(&from_vault(&root, &path).await);
    let roles_before = db.roles().await;

    // Vault refuses from now on. AWS (published first, as it only stages) must
    // be reverted: no AWSPENDING, AWSCURRENT unchanged.
    vaultrs::token::revoke(&root, &token).await.unwrap();
    let mut errors = String::new();
    for _ in 0..2 {
        let err = rotation::rotate(&ctx, &acc)
            .await
            .expect_err("vault refuses");
        errors.push_str(&format!("{err}\n{err:?}\n"));
    }
    assert!(
        errors.contains("store vault") && errors.contains(&path),
        "{errors}"
    );
    let l = labels(&sm, &path).await;
    assert!(!l.values().flatten().any(|s| s == "AWSPENDING"), "{l:?}");
    assert_eq!(creds(&from_aws(&sm, &path).await).2, first.version);
    assert_eq!(creds(&from_vault(&root, &path).await).2, first.version);
    // The previous credential is still current and logs in; no new login is left.
    let cur = ctx.ledger.live(&account).await.unwrap();
    let cur = cur.iter().find(|c| c.state == CredState::Current).unwrap();
    assert_eq!(cur.version, first.version);
    db.login(&user1, pw1.expose())
        .await
        .expect("the current credential keeps working");
    assert_eq!(
        db.roles().await,
        roles_before,
        "rolled-back logins are dropped"
    );
    assert_no_secret(
        "rotation errors",
        errors.as_bytes(),
        &[pw1.expose().to_owned()],
    );

    // With AWS down instead, nothing is written to Vault either.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let token2 = scoped_token(&root, "credrotd").await;
    std::fs::write(&token_file, &token2).unwrap();
    let ctx2 = context(
        &db,
        &inventory(
            &db,
            &token_file,
            &format!("http://127.0.0.1:{port}"),
            &account,
            &path,
        ),
    )
    .await;
    let before = vaultrs::kv2::read_metadata(&root, "secret", &path)
        .await
        .unwrap()
        .current_version;
    let err = rotation::rotate(&ctx2, &acc)
        .await
        .expect_err("aws is down");
    assert!(err.to_string().contains("store aws"), "{err}");
    let after = vaultrs::kv2::read_metadata(&root, "secret", &path)
        .await
        .unwrap()
        .current_version;
    assert_eq!(before, after, "vault saw no write");
    db.login(&user1, pw1.expose()).await.expect("still works");
    assert_eq!(db.roles().await, roles_before);

    vault_cleanup(&root, &path).await;
    aws_cleanup(&sm, &path).await;
}

#[test]
fn the_vault_and_aws_examples_pass_check() {
    for example in ["config/examples/vault.yaml", "config/examples/aws.yaml"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_credrotd"))
            .args(["-c", example, "check"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{example}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Delegates to a real store but never finishes `promote`, so that dropping the
/// saga there acts like a process killed between publish and promote.
struct HangOnPromote(Arc<dyn Store>);

#[async_trait::async_trait]
impl Store for HangOnPromote {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn two_phase(&self) -> bool {
        self.0.two_phase()
    }
    async fn publish(&self, p: &Publication<'_>) -> Result<credrotd::store::Undo, StoreError> {
        self.0.publish(p).await
    }
    async fn revert(&self, undo: credrotd::store::Undo) -> Result<(), StoreError> {
        self.0.revert(undo).await
    }
    async fn current_version(&self, account: &str, path: &str) -> Result<Option<i64>, StoreError> {
        self.0.current_version(account, path).await
    }
    async fn fetch(
        &self,
        account: &str,
        path: &str,
        version: Option<i64>,
    ) -> Result<Option<credrotd::store::Held>, StoreError> {
        self.0.fetch(account, path, version).await
    }
    async fn check(&self) -> Result<(), StoreError> {
        self.0.check().await
    }
    async fn promote(&self, _account: &str, _path: &str, _version: i64) -> Result<(), StoreError> {
        std::future::pending().await
    }
}

/// A store whose publish never answers (a crash in the middle of it).
struct HangOnPublish(Arc<dyn Store>);

#[async_trait::async_trait]
impl Store for HangOnPublish {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn two_phase(&self) -> bool {
        self.0.two_phase()
    }
    async fn publish(&self, _p: &Publication<'_>) -> Result<credrotd::store::Undo, StoreError> {
        std::future::pending().await
    }
    async fn revert(&self, undo: credrotd::store::Undo) -> Result<(), StoreError> {
        self.0.revert(undo).await
    }
    async fn current_version(&self, account: &str, path: &str) -> Result<Option<i64>, StoreError> {
        self.0.current_version(account, path).await
    }
    async fn fetch(
        &self,
        account: &str,
        path: &str,
        version: Option<i64>,
    ) -> Result<Option<credrotd::store::Held>, StoreError> {
        self.0.fetch(account, path, version).await
    }
    async fn check(&self) -> Result<(), StoreError> {
        self.0.check().await
    }
}

/// "Current means every store": a crash between two stores' publishes leaves a
/// credential only AWS holds (staged). Recovery reads it back from AWS, checks
/// that it logs in, publishes it to Vault and promotes it everywhere, instead of
/// promoting it while Vault still serves the predecessor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_two_stores_publishes_is_finished_in_every_store() {
    let db = TestDb::new().await;
    let root = root();
    let sm = sm().await;
    let account = db.name("half");
    let path = format!("credrotd/{}/half", db.tag);
    let token_file = db.dir.path().join("vault-token");
    std::fs::write(&token_file, scoped_token(&root, "credrotd").await).unwrap();
    let yaml = inventory(&db, &token_file, &aws_endpoint(), &account, &path);
    let ctx = context(&db, &yaml).await;
    let acc = ctx.account(&account).unwrap().clone();
    let first = rotation::rotate(&ctx, &acc).await.unwrap();

    let mut crashing = context(&db, &yaml).await;
    let vault = crashing.stores["vault"].clone();
    crashing
        .stores
        .insert("vault".into(), Arc::new(HangOnPublish(vault)));
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(8),
        rotation::rotate(&crashing, &acc),
    )
    .await;
    assert!(r.is_err(), "the saga hangs in Vault's publish");
    drop(crashing);
    let live = ctx.ledger.live(&account).await.unwrap();
    let mid = live
        .iter()
        .find(|c| c.state == CredState::Verified)
        .expect("left verified")
        .clone();
    assert_eq!(mid.stores, ["aws"], "only AWS holds it");
    let (_, _, vv) = creds(&from_vault(&root, &path).await);
    assert_eq!(vv, first.version, "Vault still serves the predecessor");

    let report = rotation::recover_account(&ctx, &acc).await.unwrap();
    assert_eq!(report.promoted.len(), 1, "{report:?}");
    let (au, ap, av) = creds(&from_aws(&sm, &path).await);
    let (vu, vp, vv) = creds(&from_vault(&root, &path).await);
    assert_eq!((av, vv), (mid.version, mid.version), "every store holds it");
    assert_eq!(au, vu);
    db.login(&au, ap.expose())
        .await
        .expect("AWS's credential logs in");
    db.login(&vu, vp.expose())
        .await
        .expect("Vault's credential logs in");
    let live = ctx.ledger.live(&account).await.unwrap();
    let cur = live.iter().find(|c| c.state == CredState::Current).unwrap();
    assert_eq!(cur.version, mid.version);
    let prev = live.iter().find(|c| c.version == first.version).unwrap();
    assert_eq!(
        prev.state,
        CredState::Retiring,
        "the predecessor gets its full overlap"
    );

    vault_cleanup(&root, &path).await;
    aws_cleanup(&sm, &path).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_publish_and_promote_is_finished_on_restart() {
    let db = TestDb::new().await;
    let root = root();
    let sm = sm().await;
    let account = db.name("crash");
    let path = format!("credrotd/{}/crash", db.tag);
    let token_file = db.dir.path().join("vault-token");
    std::fs::write(&token_file, scoped_token(&root, "credrotd").await).unwrap();
    let yaml = inventory(&db, &token_file, &aws_endpoint(), &account, &path);
    let ctx = context(&db, &yaml).await;
    let acc = ctx.account(&account).unwrap().clone();
    let first = rotation::rotate(&ctx, &acc).await.unwrap();

    // The second rotation "dies" while promoting in AWS: every store holds the
    // new credential (AWS as AWSPENDING), the ledger says so, nothing is current.
    let mut crashing = context(&db, &yaml).await;
    let aws = crashing.stores["aws"].clone();
    crashing
        .stores
        .insert("aws".into(), Arc::new(HangOnPromote(aws)));
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(8),
        rotation::rotate(&crashing, &acc),
    )
    .await;
    assert!(r.is_err(), "the saga hangs in promote");
    drop(crashing);
    let live = ctx.ledger.live(&account).await.unwrap();
    let mid = live
        .iter()
        .find(|c| c.state == CredState::Verified)
        .expect("left verified");
    assert_eq!(mid.stores, ["aws", "vault"]);
    assert!(labels(&sm, &path)
        .await
        .values()
        .flatten()
        .any(|s| s == "AWSPENDING"));

    // Restart: recovery finishes the publish instead of repeating it.
    let report = rotation::recover_account(&ctx, &acc).await.unwrap();
    assert_eq!(report.promoted.len(), 1, "{report:?}");
    assert!(!report.rotate_now, "every store held it: nothing to redo");
    let l = labels(&sm, &path).await;
    assert!(!l.values().flatten().any(|s| s == "AWSPENDING"), "{l:?}");
    let (au, ap, av) = creds(&from_aws(&sm, &path).await);
    let (_, _, vv) = creds(&from_vault(&root, &path).await);
    assert_eq!((av, vv), (mid.version, mid.version));
    assert!(av > first.version);
    db.login(&au, ap.expose())
        .await
        .expect("the finished credential logs in");
    let live = ctx.ledger.live(&account).await.unwrap();
    let cur = live.iter().find(|c| c.state == CredState::Current).unwrap();
    assert_eq!(cur.version, mid.version);

    vault_cleanup(&root, &path).await;
    aws_cleanup(&sm, &path).await;
}

/// A token of the policy `prefix` with a short TTL.
async fn short_token(root: &VaultClient, prefix: &str, ttl: &str, renewable: bool) -> String {
    let mut req = vaultrs::api::token::requests::CreateTokenRequest::builder();
    req.policies(vec![prefix.to_owned()])
        .ttl(ttl)
        .explicit_max_ttl("1h")
        .renewable(renewable);
    vaultrs::token::new(root, Some(&mut req))
        .await
        .unwrap()
        .client_token
}

// Token lifetimes are the server's clock, so this test waits for real (5 s).
#[tokio::test]
async fn vault_renews_its_token_and_logs_in_again_when_it_cannot() {
    let root = root();
    let t = tag();
    let _ = scoped_token(&root, &t).await; // creates the policy `t`
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let ep = endpoint();
    let pw = Secret::generate();

    // A renewable 4 s token outlives its TTL because the store renews it once
    // half of the TTL has passed.
    std::fs::write(&file, short_token(&root, &t, "4s", true).await).unwrap();
    let store = VaultStore::new(
        "vault",
        vault_config(VaultAuth::Token(TokenSource::File(file.clone()))),
    );
    store.check().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    store.check().await.expect("renewed");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let path = format!("{t}/renew/acct");
    store
        .publish(&publication("acct", &path, 1, &pw, &ep))
        .await
        .expect("the renewed token still works after its first TTL");

    // A token that cannot be renewed is replaced by logging in again, which for
    // token auth re-reads the token file (e.g. rewritten by an agent).
    std::fs::write(&file, short_token(&root, &t, "2s", false).await).unwrap();
    let store = VaultStore::new(
        "vault",
        vault_config(VaultAuth::Token(TokenSource::File(file.clone()))),
    );
    store.check().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    std::fs::write(&file, short_token(&root, &t, "1h", false).await).unwrap();
    store
        .publish(&publication("acct", &path, 2, &pw, &ep))
        .await
        .expect("logged in again with the new token");
    assert_eq!(store.current_version("acct", &path).await.unwrap(), Some(2));
    vault_cleanup(&root, &path).await;
    let _ = vaultrs::sys::policy::delete(&root, &t).await;
}

// ---- Reading back what a store holds (Store::fetch) ----

/// Log lines written while the guard lives (this thread), for checking that a
/// warning names the store and the path but never the content.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn start() -> (Captured, tracing::subscriber::DefaultGuard) {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (out, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Checks what a fetch returned against what was published, and that its
/// `Debug` shows no password.
fn assert_held(
    held: Option<credrotd::store::Held>,
    version: i64,
    username: &str,
    password: &Secret,
) -> credrotd::store::Held {
    let held = held.unwrap_or_else(|| panic!("version {version} is held"));
    assert_eq!(held.version, version);
    assert_eq!(held.username, username);
    assert_eq!(held.password.expose(), password.expose());
    assert!(
        held.issued_at.is_some() && held.expires_at.is_some(),
        "{held:?}"
    );
    assert!(
        held.expires_at.unwrap() > held.issued_at.unwrap(),
        "{held:?}"
    );
    let debug = format!("{held:?} {:?}", Some(&held));
    assert!(
        debug.contains("[redacted]") && debug.contains(username),
        "{debug}"
    );
    assert_no_secret(
        "Held's Debug",
        debug.as_bytes(),
        &[password.expose().to_owned()],
    );
    held
}

/// A document that looks like a secret but is not a credrotd payload.
fn foreign_doc(marker: &str) -> serde_json::Value {
    serde_json::json!({ "user": "someone", "pass": marker, "note": "made by hand" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn file_store_fetches_what_the_file_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = credrotd::store::file::FileStore::new("local", dir.path().join("s"), 0o440);
    let ep = endpoint();
    let (pw1, pw2) = (Secret::generate(), Secret::generate());
    assert!(store.fetch("etl", "", None).await.unwrap().is_none());
    assert!(store.fetch("etl", "", Some(1)).await.unwrap().is_none());

    store
        .publish(&publication("etl", "p/etl", 1, &pw1, &ep))
        .await
        .unwrap();
    assert_held(
        store.fetch("etl", "p/etl", None).await.unwrap(),
        1,
        "etl",
        &pw1,
    );
    assert_held(
        store.fetch("etl", "p/etl", Some(1)).await.unwrap(),
        1,
        "etl",
        &pw1,
    );
    assert!(store
        .fetch("etl", "p/etl", Some(2))
        .await
        .unwrap()
        .is_none());
    store
        .publish(&publication("etl", "p/etl", 2, &pw2, &ep))
        .await
        .unwrap();
    assert_held(
        store.fetch("etl", "p/etl", None).await.unwrap(),
        2,
        "etl",
        &pw2,
    );
    // The file holds one credential: the one before it is gone.
    assert!(store
        .fetch("etl", "p/etl", Some(1))
        .await
        .unwrap()
        .is_none());

    // A file that cannot be read is an error naming the store and the path.
    std::fs::create_dir(store.file_for("dir")).unwrap();
    let err = store.fetch("dir", "", None).await.expect_err("a directory");
    let msg = format!("{err} {err:?}");
    assert!(
        msg.contains("store local") && msg.contains("dir.json"),
        "{msg}"
    );
}

#[tokio::test]
async fn vault_fetch_reads_the_latest_and_older_kv_versions() {
    let root = root();
    let t = tag();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, scoped_token(&root, &t).await).unwrap();
    let store = VaultStore::new(
        "vault",
        vault_config(VaultAuth::Token(TokenSource::File(token_file))),
    );
    let path = format!("{t}/fetch/etl");
    let ep = endpoint();
    let pws = [Secret::generate(), Secret::generate(), Secret::generate()];
    let all: Vec<String> = pws.iter().map(|p| p.expose().to_owned()).collect();
    assert!(store.fetch("etl", &path, None).await.unwrap().is_none());
    assert!(store.fetch("etl", &path, Some(1)).await.unwrap().is_none());
    for (i, pw) in pws.iter().enumerate() {
        store
            .publish(&publication("etl", &path, i as i64 + 1, pw, &ep))
            .await
            .unwrap();
    }
    assert_held(
        store.fetch("etl", &path, None).await.unwrap(),
        3,
        "etl",
        &pws[2],
    );
    assert_held(
        store.fetch("etl", &path, Some(3)).await.unwrap(),
        3,
        "etl",
        &pws[2],
    );
    // No longer the latest KV version, still in the history.
    assert_held(
        store.fetch("etl", &path, Some(1)).await.unwrap(),
        1,
        "etl",
        &pws[0],
    );
    assert!(store.fetch("etl", &path, Some(9)).await.unwrap().is_none());

    // A deleted latest version is what readers get: nothing. Nor is it held.
    vaultrs::kv2::delete_latest(&root, "secret", &path)
        .await
        .unwrap();
    assert!(store.fetch("etl", &path, None).await.unwrap().is_none());
    assert!(store.fetch("etl", &path, Some(3)).await.unwrap().is_none());
    assert_held(
        store.fetch("etl", &path, Some(2)).await.unwrap(),
        2,
        "etl",
        &pws[1],
    );

    // The history is looked through for 10 versions before the latest, no more
    // (the dev server keeps 10 versions in all unless told otherwise).
    let mut keep = vaultrs::api::kv2::requests::SetSecretMetadataRequest::builder();
    keep.max_versions(30u64);
    vaultrs::kv2::set_metadata(&root, "secret", &path, Some(&mut keep))
        .await
        .unwrap();
    for _ in 0..9 {
        vaultrs::kv2::set(&root, "secret", &path, &foreign_doc("x"))
            .await
            .unwrap();
    }
    assert_held(
        store.fetch("etl", &path, Some(2)).await.unwrap(),
        2,
        "etl",
        &pws[1],
    );
    vaultrs::kv2::set(&root, "secret", &path, &foreign_doc("x"))
        .await
        .unwrap();
    assert!(store.fetch("etl", &path, Some(2)).await.unwrap().is_none());

    // Outside the token's policy: an error naming store and path, no password.
    let err = store
        .fetch("etl", "elsewhere/etl", None)
        .await
        .expect_err("outside the policy");
    let msg = format!("{err} {err:?}");
    assert!(
        msg.contains("store vault") && msg.contains("secret/elsewhere/etl"),
        "{msg}"
    );
    assert_no_secret("a fetch error", msg.as_bytes(), &all);

    vault_cleanup(&root, &path).await;
    let _ = vaultrs::sys::policy::delete(&root, &t).await;
}

#[tokio::test]
async fn aws_fetch_reads_current_a_pending_only_version_and_labelled_ones() {
    let sm = sm().await;
    let store = aws_store(aws_endpoint());
    let t = tag();
    let name = format!("credrotd/{t}/fetch");
    let ep = endpoint();
    let (pw1, pw2) = (Secret::generate(), Secret::generate());
    let all = [pw1.expose().to_owned(), pw2.expose().to_owned()];
    assert!(store.fetch("etl", &name, None).await.unwrap().is_none());
    assert!(store.fetch("etl", &name, Some(1)).await.unwrap().is_none());

    store
        .publish(&publication("etl", &name, 1, &pw1, &ep))
        .await
        .unwrap();
    store.promote("etl", &name, 1).await.unwrap();
    let undo = store
        .publish(&publication("etl", &name, 2, &pw2, &ep))
        .await
        .unwrap();
    // Version 2 is only staged (AWSPENDING): readers get 1, fetch(2) finds it.
    assert_held(
        store.fetch("etl", &name, None).await.unwrap(),
        1,
        "etl",
        &pw1,
    );
    assert_held(
        store.fetch("etl", &name, Some(2)).await.unwrap(),
        2,
        "etl",
        &pw2,
    );
    assert_held(
        store.fetch("etl", &name, Some(1)).await.unwrap(),
        1,
        "etl",
        &pw1,
    );
    assert!(store.fetch("etl", &name, Some(3)).await.unwrap().is_none());
    // Reverted, it has no staging label left: not held any more.
    store.revert(undo).await.unwrap();
    assert!(store.fetch("etl", &name, Some(2)).await.unwrap().is_none());
    assert_held(
        store.fetch("etl", &name, None).await.unwrap(),
        1,
        "etl",
        &pw1,
    );

    // A labelled version that credrotd did not write under its token (put back
    // by hand) is found by its payload.
    let pw7 = Secret::generate();
    let doc = publication("etl", &name, 7, &pw7, &ep).to_json();
    sm.put_secret_value()
        .secret_id(&name)
        .secret_string(String::from_utf8(doc.to_vec()).unwrap())
        .version_stages("handmade")
        .send()
        .await
        .unwrap();
    assert_held(
        store.fetch("etl", &name, Some(7)).await.unwrap(),
        7,
        "etl",
        &pw7,
    );

    // A store that is down: an error naming store and path, no password.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let down = aws_store(format!("http://127.0.0.1:{port}"));
    for version in [None, Some(1)] {
        let err = down
            .fetch("etl", &name, version)
            .await
            .expect_err("nothing listens there");
        let msg = format!("{err} {err:?}");
        assert!(msg.contains("store aws") && msg.contains(&name), "{msg}");
        assert_no_secret("a fetch error", msg.as_bytes(), &all);
    }
    aws_cleanup(&sm, &name).await;
}

/// Not JSON, JSON without credrotd's keys, and another account's payload are
/// `None` in every store, with a warning naming the store and the path and
/// never the content.
#[tokio::test]
async fn foreign_payloads_are_none_with_a_warning_that_shows_no_content() {
    let root = root();
    let sm = sm().await;
    let t = tag();
    let dir = tempfile::tempdir().unwrap();
    let file = credrotd::store::file::FileStore::new("local", dir.path().to_owned(), 0o440);
    let vault = VaultStore::new(
        "vault",
        vault_config(VaultAuth::Token(TokenSource::Inline(Secret::new(
            root_token(),
        )))),
    );
    let aws = aws_store(aws_endpoint());
    let ep = endpoint();
    let marker = Secret::generate();
    let other = publication("other", "x", 4, &marker, &ep).to_json();
    let docs: [(&str, Vec<u8>); 3] = [
        (
            "notjson",
            format!("password={}", marker.expose()).into_bytes(),
        ),
        (
            "nokeys",
            foreign_doc(marker.expose()).to_string().into_bytes(),
        ),
        ("otheraccount", other.to_vec()),
    ];
    let (logs, _guard) = Captured::start();
    for (case, doc) in &docs {
        let account = "acct";
        let path = format!("credrotd/{t}/{case}");
        std::fs::write(file.file_for(account), doc).unwrap();
        match serde_json::from_slice::<serde_json::Value>(doc) {
            Ok(v) => {
                vaultrs::kv2::set(&root, "secret", &path, &v).await.unwrap();
            }
            // Vault's KV holds JSON objects only.
            Err(_) => {
                vaultrs::kv2::set(
                    &root,
                    "secret",
                    &path,
                    &serde_json::json!({ "value": marker.expose() }),
                )
                .await
                .unwrap();
            }
        }
        sm.create_secret()
            .name(&path)
            .secret_string(String::from_utf8(doc.clone()).unwrap())
            .send()
            .await
            .unwrap();
        let stores: [(&dyn Store, String); 3] = [
            (&file, file.file_for(account).display().to_string()),
            (&vault, format!("secret/{path}")),
            (&aws, path.clone()),
        ];
        for (store, shown) in stores {
            let before = logs.text().len();
            for version in [None, Some(4)] {
                let r = store.fetch(account, &path, version).await;
                assert!(
                    matches!(r, Ok(None)),
                    "{case} in {}: {:?}",
                    store.name(),
                    r.map(|h| h.map(|h| h.version))
                );
            }
            let new = logs.text()[before..].to_owned();
            assert!(
                new.contains("WARN")
                    && new.contains(&format!("store={}", store.name()))
                    && new.contains(&shown),
                "{case} in {}: {new}",
                store.name()
            );
        }
        vault_cleanup(&root, &path).await;
        aws_cleanup(&sm, &path).await;
    }
    assert_no_secret(
        "the log",
        logs.text().as_bytes(),
        &[marker.expose().to_owned()],
    );
}

/// The AWS revert and discard never delete a secret that the same publish did
/// not create, and leave its AWSCURRENT where it was.
#[tokio::test]
async fn aws_revert_keeps_a_secret_credrotd_did_not_create() {
    let sm = sm().await;
    let store = aws_store(aws_endpoint());
    let t = tag();
    let ep = endpoint();
    let (pw1, pw2) = (Secret::generate(), Secret::generate());
    let all = [pw1.expose().to_owned(), pw2.expose().to_owned()];
    let current_id = |name: String| {
        let sm = sm.clone();
        async move {
            sm.get_secret_value()
                .secret_id(name)
                .version_stage("AWSCURRENT")
                .send()
                .await
                .unwrap()
                .version_id()
                .unwrap()
                .to_owned()
        }
    };

    // A secret made outside credrotd, with a value of its own.
    let made = format!("credrotd/{t}/made");
    let out = sm
        .create_secret()
        .name(&made)
        .secret_string(foreign_doc("made-by-hand-value-0123").to_string())
        .send()
        .await
        .unwrap();
    let theirs = out.version_id().unwrap().to_owned();
    let undo = store
        .publish(&publication("acct", &made, 1, &pw1, &ep))
        .await
        .unwrap();
    assert!(!undo.created_secret);
    store.revert(undo).await.unwrap();
    assert_eq!(
        labels(&sm, &made).await,
        HashMap::from([(theirs.clone(), vec!["AWSCURRENT".to_owned()])])
    );
    store
        .publish(&publication("acct", &made, 2, &pw2, &ep))
        .await
        .unwrap();
    store.discard("acct", &made, 2).await.unwrap();
    assert_eq!(
        labels(&sm, &made).await,
        HashMap::from([(theirs.clone(), vec!["AWSCURRENT".to_owned()])])
    );

    // A secret made outside credrotd without a value (e.g. by Terraform): AWS
    // makes credrotd's first version AWSCURRENT by itself. The revert must not
    // delete the secret; it cannot move AWSCURRENT anywhere, so it says that
    // the store still serves the version.
    let empty = format!("credrotd/{t}/empty");
    sm.create_secret().name(&empty).send().await.unwrap();
    let undo = store
        .publish(&publication("acct", &empty, 1, &pw1, &ep))
        .await
        .unwrap();
    assert!(!undo.created_secret);
    let err = store
        .revert(undo)
        .await
        .expect_err("AWSCURRENT cannot move");
    let msg = format!("{err} {err:?}");
    assert!(
        msg.contains("store aws") && msg.contains(&empty) && msg.contains("AWSCURRENT"),
        "{msg}"
    );
    assert_no_secret("a revert error", msg.as_bytes(), &all);
    assert_eq!(
        current_id(empty.clone()).await,
        request_token("acct", &empty, 1),
        "the secret is still there"
    );
    // So does a discard during recovery.
    let err = store
        .discard("acct", &empty, 1)
        .await
        .expect_err("AWSCURRENT cannot move");
    assert!(err.to_string().contains("AWSCURRENT"), "{err}");
    assert_eq!(
        current_id(empty.clone()).await,
        request_token("acct", &empty, 1)
    );

    // A secret credrotd created in an earlier rotation, whose first version is
    // current: a retried publish of that version changes nothing, and its
    // revert must not delete the secret (it used to).
    let ours = format!("credrotd/{t}/ours");
    store
        .publish(&publication("acct", &ours, 1, &pw1, &ep))
        .await
        .unwrap();
    store.promote("acct", &ours, 1).await.unwrap();
    let undo = store
        .publish(&publication("acct", &ours, 1, &pw1, &ep))
        .await
        .unwrap();
    assert!(undo.unchanged && !undo.created_secret, "{undo:?}");
    store.revert(undo).await.unwrap();
    assert_held(
        store.fetch("acct", &ours, None).await.unwrap(),
        1,
        "acct",
        &pw1,
    );
    // And the revert of its next version moves AWSCURRENT back to the first.
    let undo = store
        .publish(&publication("acct", &ours, 2, &pw2, &ep))
        .await
        .unwrap();
    store.promote("acct", &ours, 2).await.unwrap();
    store.revert(undo).await.unwrap();
    assert_held(
        store.fetch("acct", &ours, None).await.unwrap(),
        1,
        "acct",
        &pw1,
    );
    assert!(!labels(&sm, &ours)
        .await
        .values()
        .flatten()
        .any(|s| s == "AWSPENDING"));

    // Only a secret that this very publish created goes again.
    let fresh = format!("credrotd/{t}/fresh");
    let undo = store
        .publish(&publication("acct", &fresh, 1, &pw1, &ep))
        .await
        .unwrap();
    assert!(undo.created_secret);
    store.revert(undo).await.unwrap();
    let gone = sm.describe_secret().secret_id(&fresh).send().await;
    assert!(
        gone.as_ref()
            .err()
            .and_then(|e| e.as_service_error())
            .is_some_and(|e| e.is_resource_not_found_exception()),
        "{gone:?}"
    );

    for name in [&made, &empty, &ours] {
        aws_cleanup(&sm, name).await;
    }
}

/// Secrets passed in the environment (`password_env`, `token_env`, the AWS
/// SDK's keys) are moved into memory before any thread starts and their values
/// wiped from the environment: `/proc/<pid>/environ` of the running daemon —
/// read here as root, which non-dumpability does not stop — holds none of
/// them, while the daemon still uses all three to issue and publish. The
/// control (a child started with the same environment) shows the read works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_the_environment_are_taken_out_of_it_and_still_used() {
    use std::process::{Command, Stdio};
    let db = TestDb::new().await;
    let root = root();
    let sm = sm().await;
    let account = db.name("envsecrets");
    let path = format!("credrotd/{}/env", db.tag);
    let pg_password = std::fs::read_to_string(&db.password_file).unwrap();
    let pg_password = pg_password.trim_end().to_owned();
    let vault_token = scoped_token(&root, "credrotd").await;
    let aws_secret = format!(
        "aws-secret-{:08x}{:08x}",
        common::rand_u32(),
        common::rand_u32()
    );
    let secrets_dir = db.secrets_dir();
    std::fs::create_dir_all(&secrets_dir).unwrap();
    let yaml = format!(
        "version: 1\nenvironment: development\nstate: sqlite://{ledger}\n\
         defaults: {{ schedule: \"0 0 3 * * *\", overlap: 1h }}\n\
         databases:\n  main:\n    engine: postgres\n    url: {url}\n    password_env: CREDROTD_T_PG_PASSWORD\n\
         stores:\n  local: {{ kind: file, dir: {secrets}, mode: \"0400\" }}\n  \
         vault: {{ kind: vault, address: \"{vault}\", auth: {{ method: token, token_env: CREDROTD_T_VAULT_TOKEN }} }}\n  \
         aws: {{ kind: aws_secrets_manager, region: eu-west-1, endpoint: \"{aws}\" }}\n\
         accounts:\n  {account}:\n    database: main\n    store: [local, vault, aws]\n    path: {path}\n    grants:\n      - {{ schema: public, privileges: [USAGE] }}\n",
        ledger = db.ledger_path().display(),
        url = db.url,
        secrets = secrets_dir.display(),
        vault = vault_addr(),
        aws = aws_endpoint(),
    );
    let inventory = db.dir.path().join("inventory.yaml");
    std::fs::write(&inventory, yaml).unwrap();
    let log = db.dir.path().join("daemon.log");
    let env = [
        ("CREDROTD_T_PG_PASSWORD", pg_password.as_str()),
        ("CREDROTD_T_VAULT_TOKEN", vault_token.as_str()),
        ("AWS_ACCESS_KEY_ID", "credrotd-env-test"),
        ("AWS_SECRET_ACCESS_KEY", aws_secret.as_str()),
    ];
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_credrotd"));
    daemon
        .arg("-c")
        .arg(&inventory)
        .arg("run")
        .env("RUST_LOG", "debug,sqlx=warn,hyper=info,aws=info")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut control = Command::new("sleep");
    control.arg("60");
    for (k, v) in env {
        daemon.env(k, v);
        control.env(k, v);
    }
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut daemon = Kill(daemon.spawn().unwrap());
    let control = Kill(control.spawn().unwrap());
    let file = secrets_dir.join(format!("{account}.json"));
    common::wait_until(
        "the first credential in every store",
        std::time::Duration::from_secs(60),
        || {
            assert!(
                daemon.0.try_wait().unwrap().is_none(),
                "daemon exited:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            file.exists()
        },
    );
    // Current means every store: the file is written last, by promotion.
    let published = db.published(&account);
    db.login(&published.username, published.password.expose())
        .await
        .expect("the credential logs in");
    let (vu, _, _) = creds(&from_vault(&root, &path).await);
    let (au, _, _) = creds(&from_aws(&sm, &path).await);
    assert_eq!(
        (vu.as_str(), au.as_str()),
        (published.username.as_str(), published.username.as_str())
    );

    let environ = |pid: u32| std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let control_env = environ(control.0.id());
    let daemon_env = environ(daemon.0.id());
    let values = [pg_password.clone(), vault_token.clone(), aws_secret.clone()];
    for v in &values {
        assert!(
            control_env.windows(v.len()).any(|w| w == v.as_bytes()),
            "control: the secret is readable in an ordinary process's environ"
        );
    }
    assert_no_secret("the daemon's /proc/<pid>/environ", &daemon_env, &values);
    let text = String::from_utf8_lossy(&daemon_env);
    assert!(
        text.contains("CREDROTD_CONFIG") || text.contains("RUST_LOG="),
        "other variables stay: {text:?}"
    );
    drop(daemon);
    assert_no_secret("the daemon's log", &std::fs::read(&log).unwrap(), &values);
    vault_cleanup(&root, &path).await;
    aws_cleanup(&sm, &path).await;
}
