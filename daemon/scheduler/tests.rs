//! Scheduler tests: the daemon loop driven by a [`ManualClock`] against an
//! in-memory engine and store (the only way to inject a failure or hold a step at
//! a precise point), with a real SQLite ledger in a temporary directory.
//!
//! Waiting for the loop's asynchronous work polls state for a bounded time; the
//! logic under test never depends on the wall clock: every schedule, overlap and
//! backoff deadline is reached by moving the manual clock.

use super::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::TimeZone;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::clock::{Clock, ManualClock, SharedClock};
use crate::engine::{Endpoint, Engine, EngineError, Engines, Login, LoginInfo};
use crate::inventory::Inventory;
use crate::ledger::Ledger;
use crate::secret::Secret;
use crate::store::{Publication, Store, StoreError, Stores, Undo};

// ---------------------------------------------------------------------------
// Time.

/// 2026-03-01 at `h:m:s` UTC.
fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, h, m, s).unwrap()
}

/// Where every test's manual clock starts: 30 s before the first fire of the
/// every-minute schedule.
fn t0() -> DateTime<Utc> {
    at(0, 0, 30)
}

// ---------------------------------------------------------------------------
// The in-memory engine.

/// A login role in [`MemEngine`].
#[derive(Clone)]
struct MemLogin {
    /// The account whose ephemeral login this is (what `managed_logins` lists);
    /// `None` for fixed roles.
    account: Option<String>,
    password: Option<Secret>,
    can_login: bool,
    valid_until: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct MemState {
    logins: BTreeMap<String, MemLogin>,
    /// Every `(username, password)` that `create_login` / `set_password` was asked
    /// to set, in call order, including calls that then failed.
    attempts: Vec<(String, Secret)>,
    /// `create_login` calls that started.
    entered: usize,
    in_flight: usize,
    max_in_flight: usize,
    in_flight_by_account: BTreeMap<String, usize>,
    max_in_flight_by_account: BTreeMap<String, usize>,
    /// Logins whose sessions were terminated.
    terminated: Vec<String>,
}

/// An in-memory database. Checks passwords, login rights and expiry against the
/// shared clock; injects failures; and can hold `create_login` at a gate so that
/// how many run at once is observable.
struct MemEngine {
    clock: SharedClock,
    state: Mutex<MemState>,
    /// Calls of each kind that fail before the next one succeeds.
    fail_create: AtomicUsize,
    fail_set_password: AtomicUsize,
    fail_verify: AtomicUsize,
    /// `drop_login` calls that fail (a login that owns objects elsewhere).
    fail_drop: AtomicUsize,
    /// `create_login` calls that panic (a value the code did not expect).
    panic_create: AtomicUsize,
    /// While set, `create_login` waits for a permit of this semaphore after the
    /// role exists (as if the server had not answered yet). Closing it opens the
    /// gate for good.
    gate: Mutex<Option<Arc<Semaphore>>>,
}

/// Counts a `create_login` in flight until dropped (also when the call's future
/// is dropped at the gate).
struct InFlight<'a> {
    engine: &'a MemEngine,
    account: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut s = self.engine.lock();
        s.in_flight -= 1;
        if let Some(n) = s.in_flight_by_account.get_mut(&self.account) {
            *n -= 1;
        }
    }
}

fn take_failure(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn injected(action: &str) -> EngineError {
    EngineError::Sql {
        database: "main".into(),
        action: format!("{action} (injected failure)"),
        source: sqlx::Error::PoolTimedOut,
    }
}

impl MemEngine {
    fn new(clock: SharedClock) -> Self {
        MemEngine {
            clock,
            state: Mutex::new(MemState::default()),
            fail_create: AtomicUsize::new(0),
            fail_set_password: AtomicUsize::new(0),
            fail_verify: AtomicUsize::new(0),
            fail_drop: AtomicUsize::new(0),
            panic_create: AtomicUsize::new(0),
            gate: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close_gate(&self) {
        *self.gate.lock().unwrap() = Some(Arc::new(Semaphore::new(0)));
    }

    /// Lets `n` gated `create_login` calls through.
    fn release(&self, n: usize) {
        if let Some(g) = self.gate.lock().unwrap().as_ref() {
            g.add_permits(n);
        }
    }

    fn open_gate(&self) {
        if let Some(g) = self.gate.lock().unwrap().take() {
            g.close();
        }
    }

    fn enter(&self, account: &str) -> InFlight<'_> {
        let mut s = self.lock();
        s.entered += 1;
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        let n = s
            .in_flight_by_account
            .entry(account.to_owned())
            .or_default();
        *n += 1;
        let n = *n;
        let max = s
            .max_in_flight_by_account
            .entry(account.to_owned())
            .or_default();
        *max = (*max).max(n);
        InFlight {
            engine: self,
            account: account.to_owned(),
        }
    }

    /// Whether a login with this password would succeed now. Unlike `verify`,
    /// never consumes an injected failure.
    fn accepts(&self, username: &str, password: &Secret) -> bool {
        let now = self.clock.now();
        self.lock().logins.get(username).is_some_and(|l| {
            l.can_login
                && l.password.as_ref() == Some(password)
                && l.valid_until.is_none_or(|v| v > now)
        })
    }

    /// The ephemeral logins of an account, by name.
    fn logins_of(&self, account: &str) -> Vec<(String, MemLogin)> {
        self.lock()
            .logins
            .iter()
            .filter(|(_, l)| l.account.as_deref() == Some(account))
            .map(|(n, l)| (n.clone(), l.clone()))
            .collect()
    }

    fn names_of(&self, account: &str) -> Vec<String> {
        self.logins_of(account)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    fn entered(&self) -> usize {
        self.lock().entered
    }

    fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    fn max_in_flight(&self) -> usize {
        self.lock().max_in_flight
    }

    fn max_in_flight_of(&self, account: &str) -> usize {
        self.lock()
            .max_in_flight_by_account
            .get(account)
            .copied()
            .unwrap_or(0)
    }

    fn attempts(&self) -> Vec<(String, Secret)> {
        self.lock().attempts.clone()
    }
}

#[async_trait]
impl Engine for MemEngine {
    async fn reconcile(
        &self,
        _account: &Account,
        _apply: bool,
    ) -> Result<crate::engine::Reconciled, EngineError> {
        Ok(crate::engine::Reconciled::default())
    }

    async fn create_login(&self, account: &Account, login: &Login<'_>) -> Result<(), EngineError> {
        let _flight = self.enter(&account.name);
        self.lock()
            .attempts
            .push((login.username.to_owned(), login.password.clone()));
        if take_failure(&self.panic_create) {
            panic!("injected panic in create_login");
        }
        if take_failure(&self.fail_create) {
            return Err(injected("create login"));
        }
        {
            let mut s = self.lock();
            if s.logins.contains_key(login.username) {
                return Err(EngineError::NotManaged {
                    database: "main".into(),
                    role: login.username.to_owned(),
                });
            }
            s.logins.insert(
                login.username.to_owned(),
                MemLogin {
                    account: Some(account.name.clone()),
                    password: Some(login.password.clone()),
                    can_login: true,
                    valid_until: Some(login.valid_until),
                },
            );
        }
        let gate = self.gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            // A closed gate is an open one.
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
        }
        Ok(())
    }

    async fn ensure_fixed_login(
        &self,
        _account: &Account,
        username: &str,
    ) -> Result<(), EngineError> {
        self.lock()
            .logins
            .entry(username.to_owned())
            .or_insert(MemLogin {
                account: None,
                password: None,
                can_login: false,
                valid_until: None,
            });
        Ok(())
    }

    async fn set_password(&self, _account: &Account, login: &Login<'_>) -> Result<(), EngineError> {
        self.lock()
            .attempts
            .push((login.username.to_owned(), login.password.clone()));
        if take_failure(&self.fail_set_password) {
            return Err(injected("set password"));
        }
        let mut s = self.lock();
        let Some(l) = s.logins.get_mut(login.username) else {
            return Err(EngineError::Missing {
                database: "main".into(),
                what: format!("role {}", login.username),
            });
        };
        l.password = Some(login.password.clone());
        l.can_login = true;
        l.valid_until = Some(login.valid_until);
        Ok(())
    }

    async fn verify(&self, username: &str, password: &Secret) -> Result<(), EngineError> {
        let refused = |why: &str| EngineError::Verify {
            database: "main".into(),
            username: username.to_owned(),
            source: sqlx::Error::Protocol(why.to_owned()),
        };
        if take_failure(&self.fail_verify) {
            return Err(refused("injected failure"));
        }
        if self.accepts(username, password) {
            Ok(())
        } else {
            Err(refused("password authentication failed"))
        }
    }

    async fn disable_login(&self, username: &str) -> Result<(), EngineError> {
        if let Some(l) = self.lock().logins.get_mut(username) {
            l.can_login = false;
        }
        Ok(())
    }

    async fn terminate_sessions(&self, username: &str) -> Result<u64, EngineError> {
        self.lock().terminated.push(username.to_owned());
        Ok(0)
    }

    async fn drop_login(&self, _account: &Account, username: &str) -> Result<(), EngineError> {
        if take_failure(&self.fail_drop) {
            return Err(injected(
                "drop login (objects in another database depend on it)",
            ));
        }
        self.lock().logins.remove(username);
        Ok(())
    }

    async fn extend_login(&self, username: &str, until: DateTime<Utc>) -> Result<(), EngineError> {
        if let Some(l) = self.lock().logins.get_mut(username) {
            l.valid_until = Some(until);
        }
        Ok(())
    }

    async fn login_info(&self, username: &str) -> Result<Option<LoginInfo>, EngineError> {
        Ok(self.lock().logins.get(username).map(|l| LoginInfo {
            can_login: l.can_login,
            valid_until: l.valid_until,
        }))
    }

    async fn managed_logins(&self, account: &Account) -> Result<Vec<String>, EngineError> {
        Ok(self.names_of(&account.name))
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            engine: "postgres",
            host: "db.test".into(),
            port: 5432,
            dbname: "main".into(),
        }
    }
}

// ---------------------------------------------------------------------------
// The in-memory store.

/// What a store holds for an account, parsed from the published document.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    version: i64,
    username: String,
    password: Secret,
}

/// An in-memory secret store: the last published document per account.
struct MemStore {
    name: String,
    docs: Mutex<BTreeMap<String, zeroize::Zeroizing<Vec<u8>>>>,
    /// Publishes that fail before the next one succeeds.
    fail_publish: AtomicUsize,
}

impl MemStore {
    fn new(name: &str) -> Self {
        MemStore {
            name: name.to_owned(),
            docs: Mutex::new(BTreeMap::new()),
            fail_publish: AtomicUsize::new(0),
        }
    }

    fn held(&self, account: &str) -> Option<Held> {
        let docs = self.docs.lock().unwrap();
        let v: serde_json::Value = serde_json::from_slice(docs.get(account)?).ok()?;
        Some(Held {
            version: v["version"].as_i64()?,
            username: v["username"].as_str()?.to_owned(),
            password: Secret::new(v["password"].as_str()?.to_owned()),
        })
    }
}

#[async_trait]
impl Store for MemStore {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, publication: &Publication<'_>) -> Result<Undo, StoreError> {
        if take_failure(&self.fail_publish) {
            return Err(StoreError::Write {
                store: self.name.clone(),
                path: publication.path.to_owned(),
                source: std::io::Error::other("injected failure"),
            });
        }
        let previous = self
            .docs
            .lock()
            .unwrap()
            .insert(publication.account.to_owned(), publication.to_json());
        Ok(Undo {
            account: publication.account.to_owned(),
            path: publication.path.to_owned(),
            version: publication.version,
            previous,
            written: None,
            created_secret: false,
            unchanged: false,
        })
    }

    async fn revert(&self, undo: Undo) -> Result<(), StoreError> {
        let mut docs = self.docs.lock().unwrap();
        match undo.previous {
            Some(doc) => docs.insert(undo.account, doc),
            None => docs.remove(&undo.account),
        };
        Ok(())
    }

    async fn current_version(&self, account: &str, _path: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.held(account).map(|h| h.version))
    }

    async fn fetch(
        &self,
        account: &str,
        _path: &str,
        version: Option<i64>,
    ) -> Result<Option<crate::store::Held>, StoreError> {
        let docs = self.docs.lock().unwrap();
        Ok(docs
            .get(account)
            .and_then(|doc| crate::store::Held::from_payload(doc, account))
            .filter(|h| version.is_none_or(|v| v == h.version)))
    }

    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The harness.

/// A development inventory: every account ephemeral on database `main`, rotating
/// every minute with a 20 s overlap, published to the store `local`.
/// `rotation` is the YAML of the `rotation:` mapping.
fn inventory(accounts: &[&str], rotation: &str) -> Arc<Inventory> {
    let mut yaml = format!(
        r#"version: 1
environment: development
rotation: {rotation}
defaults: {{ schedule: "0 * * * * *", overlap: 20s, strategy: ephemeral, store: local }}
databases:
  main: {{ engine: postgres, url: "postgres://credrotd_admin@127.0.0.1:1/main" }}
stores:
  local: {{ kind: file, dir: /nonexistent/credrotd-test }}
accounts:
"#
    );
    for a in accounts {
        yaml.push_str(&format!("  {a}: {{ database: main }}\n"));
    }
    match crate::inventory::parse(Path::new("t.yaml"), &yaml) {
        Ok(checked) => Arc::new(checked.inventory),
        Err(e) => panic!("{e}\n--- inventory ---\n{yaml}"),
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    clock: ManualClock,
    engine: Arc<MemEngine>,
    store: Arc<MemStore>,
    ctx: Arc<Context>,
}

/// A running `scheduler::run`.
struct Running {
    control: mpsc::Sender<Control>,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), LedgerError>>,
}

impl Running {
    async fn rotate_now(&self, accounts: &[&str]) {
        let names = accounts.iter().map(|a| (*a).to_owned()).collect();
        self.control
            .send(Control::RotateNow(names))
            .await
            .expect("the scheduler takes control messages");
    }

    /// Resolves the shutdown future.
    fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts the scheduler down and checks that `run` returns cleanly.
    async fn stop(mut self) {
        self.signal_stop();
        let res = tokio::time::timeout(Duration::from_secs(5), self.handle)
            .await
            .expect("run returns after shutdown")
            .expect("run does not panic");
        res.expect("run returns Ok");
    }
}

impl Harness {
    async fn new(accounts: &[&str], rotation: &str) -> Harness {
        let inventory = inventory(accounts, rotation);
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        let ledger = Ledger::open(&url).await.unwrap();
        let clock = ManualClock::new(t0());
        let shared: SharedClock = Arc::new(clock.clone());
        let engine = Arc::new(MemEngine::new(shared.clone()));
        let store = Arc::new(MemStore::new("local"));
        let mut engines = Engines::new();
        engines.insert("main".into(), engine.clone() as Arc<dyn Engine>);
        let mut stores = Stores::new();
        stores.insert("local".into(), store.clone() as Arc<dyn Store>);
        let ctx = Arc::new(Context {
            inventory,
            engines,
            stores,
            ledger,
            clock: shared,
            take_over: Default::default(),
            crash_after: None,
        });
        Harness {
            _dir: dir,
            clock,
            engine,
            store,
            ctx,
        }
    }

    fn start(&self) -> Running {
        let (control, rx) = mpsc::channel(64);
        let (stop, stop_rx) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stop_rx.await;
        };
        let handle = tokio::spawn(run(self.ctx.clone(), rx, shutdown));
        Running {
            control,
            stop: Some(stop),
            handle,
        }
    }

    fn account(&self, name: &str) -> &Account {
        &self.ctx.inventory.accounts[name]
    }

    async fn creds(&self, account: &str) -> Vec<Credential> {
        self.ctx.ledger.credentials(account).await.unwrap()
    }

    async fn cred(&self, account: &str, version: i64) -> Credential {
        self.creds(account)
            .await
            .into_iter()
            .find(|c| c.version == version)
            .unwrap_or_else(|| panic!("{account} has no v{version}"))
    }

    async fn current(&self, account: &str) -> Option<Credential> {
        self.creds(account)
            .await
            .into_iter()
            .find(|c| c.state == CredState::Current)
    }

    async fn current_version(&self, account: &str) -> Option<i64> {
        self.current(account).await.map(|c| c.version)
    }

    async fn state(&self, account: &str) -> AccountState {
        self.ctx.ledger.account(account).await.unwrap()
    }

    /// Waits until `version` is current and its rotation has recorded its
    /// success (the saga's last ledger write, after the promotion).
    async fn wait_current(&self, account: &str, version: i64) {
        eventually(&format!("{account} v{version} current"), || async move {
            let Some(cur) = self.current(account).await else {
                return false;
            };
            let state = self.state(account).await;
            cur.version == version
                && state.last_result.as_deref() == Some("ok")
                && state.last_attempt_at == Some(cur.updated_at)
        })
        .await;
    }

    async fn wait_failures(&self, account: &str, failures: i64) {
        eventually(
            &format!("{account} has {failures} failures"),
            || async move { self.state(account).await.failures == failures },
        )
        .await;
    }

    /// Invariants 1 to 4 at a point where nothing is in flight for `account`.
    async fn check_invariants(&self, account: &str) {
        let now = self.clock.now();
        let logins = self.engine.logins_of(account);
        let names: Vec<&String> = logins.iter().map(|(n, _)| n).collect();
        assert!(
            logins.len() <= 2,
            "{account}: more than two logins exist: {names:?}"
        );
        let usable = logins
            .iter()
            .filter(|(_, l)| l.can_login && l.valid_until.is_none_or(|v| v > now))
            .count();
        assert!(
            usable <= 2,
            "{account}: more than two logins can log in: {names:?}"
        );

        let live = self.ctx.ledger.live(account).await.unwrap();
        assert!(
            live.iter().all(|c| !c.state.is_middle()),
            "{account}: a credential is in a middle state at rest: {live:?}"
        );
        assert!(
            live.len() <= 2,
            "{account}: more than two live credentials: {live:?}"
        );
        for (name, _) in &logins {
            assert!(
                live.iter().any(|c| &c.username == name),
                "{account}: login {name} is unknown to the ledger: {live:?}"
            );
        }
        let currents: Vec<&Credential> = live
            .iter()
            .filter(|c| c.state == CredState::Current)
            .collect();
        assert_eq!(
            currents.len(),
            1,
            "{account}: exactly one current credential: {live:?}"
        );
        let current = currents[0];
        for c in live.iter().filter(|c| c.state == CredState::Retiring) {
            assert!(
                c.retire_at.is_some_and(|r| r > now) && c.version < current.version,
                "{account}: v{} retiring past its overlap or without a newer current: {c:?}",
                c.version
            );
        }

        let held = self
            .store
            .held(account)
            .expect("the store holds a credential");
        assert_eq!(
            (held.version, &held.username),
            (current.version, &current.username),
            "{account}: the store's credential is the ledger's current one"
        );
        assert!(
            self.engine.accepts(&held.username, &held.password),
            "{account}: the credential the store marks current logs in"
        );
    }
}

/// Polls `check` until it holds, for at most 3 s of real time.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Gives the scheduler time to do something it should not (start a rotation
/// early, start a second one). The assertions after it hold however long this
/// waits; it only has to be long enough for a wrong start to show.
async fn settle() {
    for _ in 0..15 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// Tests of `run`.

#[tokio::test]
async fn start_issues_a_credential_to_every_account_without_one() {
    let h = Harness::new(&["alpha", "beta"], "{}").await;
    let running = h.start();
    for name in ["alpha", "beta"] {
        h.wait_current(name, 1).await;
    }
    for name in ["alpha", "beta"] {
        let creds = h.creds(name).await;
        assert_eq!(creds.len(), 1, "{name}: one credential: {creds:?}");
        let c = &creds[0];
        assert_eq!((c.version, c.state), (1, CredState::Current));
        assert!(
            c.username.starts_with(&format!("{name}_")),
            "{}",
            c.username
        );
        assert_eq!(c.issued_at, t0());
        // Next fire 00:01:00 + 20 s overlap + the default 1 h margin.
        assert_eq!(c.expires_at, at(1, 1, 20));
        assert_eq!(c.stores, vec!["local".to_owned()]);

        let held = h.store.held(name).expect("published");
        assert_eq!(
            (held.version, held.username.as_str()),
            (1, c.username.as_str())
        );
        assert_eq!(h.engine.names_of(name), vec![c.username.clone()]);
        let info = h.engine.login_info(&c.username).await.unwrap().unwrap();
        assert!(info.can_login);
        assert_eq!(info.valid_until, Some(c.expires_at));
        assert!(h.engine.accepts(&c.username, &held.password));

        let state = h.state(name).await;
        assert_eq!(state.failures, 0);
        assert_eq!(state.last_result.as_deref(), Some("ok"));
        h.check_invariants(name).await;
    }
    running.stop().await;
}

#[tokio::test]
async fn cron_fire_rotates_and_the_previous_credential_lives_only_through_the_overlap() {
    let h = Harness::new(&["alpha"], "{}").await;
    let running = h.start();
    h.wait_current("alpha", 1).await;
    let v1 = h.cred("alpha", 1).await;
    let pw1 = h.store.held("alpha").unwrap().password;
    h.check_invariants("alpha").await;

    // Nothing happens before the fire.
    h.clock.set(at(0, 0, 59));
    settle().await;
    assert_eq!(h.creds("alpha").await.len(), 1);

    // The fire: v2 becomes current, v1 retires after the overlap and still logs in.
    h.clock.set(at(0, 1, 0));
    h.wait_current("alpha", 2).await;
    let v2 = h.cred("alpha", 2).await;
    let v1_now = h.cred("alpha", 1).await;
    assert_eq!(v1_now.state, CredState::Retiring);
    assert_eq!(v1_now.retire_at, Some(at(0, 1, 20)));
    assert_eq!(v2.issued_at, at(0, 1, 0));
    assert_ne!(v2.username, v1.username);
    let held = h.store.held("alpha").unwrap();
    assert_eq!((held.version, &held.username), (2, &v2.username));
    assert_ne!(held.password, pw1, "a rotation issues a new password");
    assert!(
        h.engine.accepts(&v1.username, &pw1),
        "v1 logs in during the overlap"
    );
    assert!(h.engine.accepts(&v2.username, &held.password));
    assert_eq!(h.engine.names_of("alpha").len(), 2);
    h.check_invariants("alpha").await;

    // One second before the overlap ends v1 still works.
    h.clock.set(at(0, 1, 19));
    settle().await;
    assert_eq!(h.cred("alpha", 1).await.state, CredState::Retiring);
    assert!(h.engine.accepts(&v1.username, &pw1));
    h.check_invariants("alpha").await;

    // The overlap ends: v1 is revoked and its login dropped.
    h.clock.set(at(0, 1, 20));
    eventually("v1 revoked", || async {
        h.cred("alpha", 1).await.state == CredState::Revoked
    })
    .await;
    assert!(
        h.engine.login_info(&v1.username).await.unwrap().is_none(),
        "v1's login is dropped"
    );
    assert!(!h.engine.accepts(&v1.username, &pw1));
    assert_eq!(h.engine.names_of("alpha"), vec![v2.username.clone()]);
    assert!(
        h.engine.lock().terminated.contains(&v1.username),
        "v1's sessions are ended"
    );
    assert_eq!(h.current_version("alpha").await, Some(2));
    h.check_invariants("alpha").await;
    running.stop().await;
}

#[tokio::test]
async fn failed_rotation_keeps_the_current_credential_and_retries_after_backoff_with_a_fresh_password(
) {
    let h = Harness::new(&["alpha"], "{ retry_initial: 5s, retry_max: 1m }").await;
    let running = h.start();
    h.wait_current("alpha", 1).await;
    let v1 = h.cred("alpha", 1).await;
    let pw1 = h.store.held("alpha").unwrap().password;

    // Attempt 1 at the fire: the database refuses to create the login.
    h.engine.fail_create.store(1, Ordering::SeqCst);
    h.clock.set(at(0, 1, 0));
    h.wait_failures("alpha", 1).await;
    let state = h.state("alpha").await;
    assert_eq!(state.last_result.as_deref(), Some("failed"));
    assert_eq!(
        state.retry_at,
        Some(at(0, 1, 5)),
        "first retry after retry_initial"
    );
    assert_eq!(h.cred("alpha", 2).await.state, CredState::Aborted);
    assert_eq!(
        h.current_version("alpha").await,
        Some(1),
        "v1 stays current"
    );
    assert!(h.engine.accepts(&v1.username, &pw1), "v1 still logs in");
    assert_eq!(h.store.held("alpha").unwrap().version, 1);
    h.check_invariants("alpha").await;

    // Not before the backoff.
    h.clock.set(at(0, 1, 4));
    settle().await;
    assert_eq!(h.engine.attempts().len(), 2, "no retry before retry_at");
    assert_eq!(h.state("alpha").await.failures, 1);

    // Attempt 2 at retry_at: the login is created but does not log in.
    h.engine.fail_verify.store(1, Ordering::SeqCst);
    h.clock.set(at(0, 1, 5));
    h.wait_failures("alpha", 2).await;
    assert_eq!(h.engine.attempts().len(), 3);
    let state = h.state("alpha").await;
    assert_eq!(state.retry_at, Some(at(0, 1, 15)), "the backoff doubles");
    assert_eq!(h.cred("alpha", 3).await.state, CredState::Aborted);
    assert_eq!(
        h.engine.names_of("alpha"),
        vec![v1.username.clone()],
        "the unverified login is rolled back"
    );
    assert_eq!(h.current_version("alpha").await, Some(1));
    h.check_invariants("alpha").await;

    h.clock.set(at(0, 1, 14));
    settle().await;
    assert_eq!(
        h.engine.attempts().len(),
        3,
        "no retry before the doubled backoff"
    );

    // Attempt 3 succeeds.
    h.clock.set(at(0, 1, 15));
    h.wait_current("alpha", 4).await;
    let state = h.state("alpha").await;
    assert_eq!((state.failures, state.retry_at), (0, None));
    assert_eq!(h.cred("alpha", 1).await.state, CredState::Retiring);
    h.check_invariants("alpha").await;

    // Every attempt drew a fresh password, and none reached the ledger's errors.
    let attempts = h.engine.attempts();
    assert_eq!(attempts.len(), 4);
    for (i, (_, a)) in attempts.iter().enumerate() {
        for (_, b) in &attempts[i + 1..] {
            assert_ne!(a, b, "each attempt uses a fresh password");
        }
    }
    let mut texts: Vec<String> = sqlx::query_scalar("SELECT detail FROM events")
        .fetch_all(h.ctx.ledger.pool())
        .await
        .unwrap();
    texts.extend(h.state("alpha").await.last_error);
    assert!(
        texts.iter().any(|t| t.contains("injected failure")),
        "the failures are recorded: {texts:?}"
    );
    for (_, pw) in &attempts {
        assert!(
            texts.iter().all(|t| !t.contains(pw.expose())),
            "no password in the ledger"
        );
    }
    running.stop().await;
}

/// Invariant 5: a first issue that fails backs off like any other rotation.
#[tokio::test]
async fn failed_first_issue_is_retried_after_backoff_not_at_once() {
    let h = Harness::new(&["alpha"], "{ retry_initial: 5s, retry_max: 1m }").await;
    h.engine.fail_create.store(2, Ordering::SeqCst);
    let running = h.start();
    h.wait_failures("alpha", 1).await;
    assert_eq!(h.state("alpha").await.retry_at, Some(at(0, 0, 35)));
    settle().await;
    assert_eq!(h.engine.attempts().len(), 1, "no retry before retry_at");

    h.clock.set(at(0, 0, 35));
    h.wait_failures("alpha", 2).await;
    settle().await;
    assert_eq!(
        h.engine.attempts().len(),
        2,
        "no retry before the doubled backoff"
    );

    h.clock.set(at(0, 0, 45));
    h.wait_current("alpha", 3).await;
    h.check_invariants("alpha").await;
    running.stop().await;
}

#[tokio::test]
async fn concurrency_bounds_the_rotations_in_flight() {
    let names = ["alpha", "bravo", "charlie", "delta", "echo"];
    let h = Harness::new(&names, "{ concurrency: 2 }").await;
    h.engine.close_gate();
    let running = h.start();

    eventually("two logins in flight", || async { h.engine.entered() == 2 }).await;
    settle().await;
    assert_eq!(
        h.engine.entered(),
        2,
        "a third rotation started while two are in flight"
    );
    assert_eq!(h.engine.in_flight(), 2);

    // One finishes: exactly one more may start.
    h.engine.release(1);
    eventually("a third login", || async { h.engine.entered() == 3 }).await;
    settle().await;
    assert_eq!(h.engine.entered(), 3);
    assert_eq!(h.engine.in_flight(), 2);

    h.engine.open_gate();
    for name in names {
        h.wait_current(name, 1).await;
    }
    assert_eq!(h.engine.max_in_flight(), 2);
    assert_eq!(h.engine.entered(), 5);
    for name in names {
        h.check_invariants(name).await;
    }
    running.stop().await;
}

#[tokio::test]
async fn rotate_now_never_runs_two_rotations_of_one_account_at_once() {
    let h = Harness::new(&["alpha"], "{}").await;
    let running = h.start();
    h.wait_current("alpha", 1).await;

    h.engine.close_gate();
    running.rotate_now(&["alpha"]).await;
    eventually("the requested rotation is in flight", || async {
        h.engine.entered() == 2
    })
    .await;
    for _ in 0..5 {
        running.rotate_now(&["alpha"]).await;
        running.rotate_now(&[]).await;
        tokio::task::yield_now().await;
    }
    settle().await;
    assert_eq!(h.engine.entered(), 2, "a second rotation of alpha started");
    assert_eq!(h.engine.max_in_flight_of("alpha"), 1);

    h.engine.open_gate();
    h.wait_current("alpha", 2).await;
    // Requests made meanwhile may coalesce into one more rotation, never more.
    settle().await;
    eventually("every started rotation of alpha finished", || async {
        let live = h.ctx.ledger.live("alpha").await.unwrap();
        live.iter().all(|c| !c.state.is_middle())
            && h.current_version("alpha").await == Some(h.engine.entered() as i64)
    })
    .await;
    assert!(
        h.engine.entered() <= 3,
        "requests coalesce: {} rotations",
        h.engine.entered()
    );
    assert_eq!(h.engine.max_in_flight_of("alpha"), 1);
    h.check_invariants("alpha").await;
    running.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_a_gated_rotation_before_run_returns() {
    let h = Harness::new(&["alpha"], "{}").await;
    let mut running = h.start();
    h.wait_current("alpha", 1).await;
    let v1 = h.cred("alpha", 1).await;

    h.engine.close_gate();
    h.clock.set(at(0, 1, 0));
    eventually("v2 in flight", || async { h.engine.entered() == 2 }).await;
    running.signal_stop();
    settle().await;
    assert!(
        !running.handle.is_finished(),
        "run waits for the in-flight rotation"
    );
    h.engine.open_gate();
    running.stop().await;

    // The step in flight ran to its end: nothing is left in the middle.
    assert_eq!(h.current_version("alpha").await, Some(2));
    assert_eq!(h.cred("alpha", 1).await.state, CredState::Retiring);
    h.check_invariants("alpha").await;
    let report = rotation::recover_account(&h.ctx, h.account("alpha"))
        .await
        .unwrap();
    assert!(
        report.rolled_back.is_empty()
            && report.promoted.is_empty()
            && report.orphans_dropped.is_empty()
    );
    assert!(!report.rotate_now);
    let live = h.ctx.ledger.live("alpha").await.unwrap();
    assert!(live.iter().all(|c| !c.state.is_middle()), "{live:?}");
    assert!(live.iter().any(|c| c.username == v1.username));
    h.check_invariants("alpha").await;
}

#[tokio::test]
async fn shutdown_past_its_grace_leaves_only_state_that_recovery_resolves() {
    let h = Harness::new(&["alpha"], "{}").await;
    let mut running = h.start();
    h.wait_current("alpha", 1).await;
    let v1 = h.cred("alpha", 1).await;
    let pw1 = h.store.held("alpha").unwrap().password;

    h.engine.close_gate();
    h.clock.set(at(0, 1, 0));
    eventually("v2 in flight", || async { h.engine.entered() == 2 }).await;

    // The gate never opens. The grace is measured on tokio's clock, so pause it
    // to make the 30 s pass at once; nothing else waits on a timer meanwhile.
    // Only the grace itself passes on the paused clock: the ledger work that
    // follows it (releasing the abandoned sagas' leases) runs on real time.
    tokio::time::pause();
    running.signal_stop();
    tokio::time::sleep(SHUTDOWN_GRACE + Duration::from_secs(1)).await;
    tokio::time::resume();
    let joined = tokio::time::timeout(Duration::from_secs(10), running.handle).await;
    joined
        .expect("run returns once the grace is over")
        .expect("run does not panic")
        .expect("run returns Ok");

    // The abandoned rotation left a planned credential whose login exists.
    let v2 = h.cred("alpha", 2).await;
    assert!(v2.state.is_middle(), "{v2:?}");
    assert!(h.engine.login_info(&v2.username).await.unwrap().is_some());

    let report = rotation::recover_account(&h.ctx, h.account("alpha"))
        .await
        .unwrap();
    assert_eq!(report.rolled_back, vec![v2.username.clone()]);
    assert!(!report.rotate_now);
    let live = h.ctx.ledger.live("alpha").await.unwrap();
    assert!(live.iter().all(|c| !c.state.is_middle()), "{live:?}");
    assert_eq!(h.cred("alpha", 2).await.state, CredState::Aborted);
    assert_eq!(h.engine.names_of("alpha"), vec![v1.username.clone()]);
    assert_eq!(h.current_version("alpha").await, Some(1));
    assert!(h.engine.accepts(&v1.username, &pw1));
    h.check_invariants("alpha").await;
}

// ---------------------------------------------------------------------------
// Tests of `due`.

fn cred(
    id: i64,
    state: CredState,
    issued_at: DateTime<Utc>,
    retire_at: Option<DateTime<Utc>>,
) -> Credential {
    Credential {
        id,
        account: "alpha".into(),
        version: id,
        database: "main".into(),
        strategy: "ephemeral".into(),
        username: format!("alpha_{id}"),
        state,
        issued_at,
        expires_at: issued_at + chrono::Duration::hours(2),
        retire_at,
        stores: vec!["local".into()],
        updated_at: issued_at,
    }
}

fn account_state(failures: i64, retry_at: Option<DateTime<Utc>>, suspended: bool) -> AccountState {
    AccountState {
        account: "alpha".into(),
        failures,
        retry_at,
        suspended,
        ..AccountState::default()
    }
}

fn rotations(items: &[Due]) -> Vec<DateTime<Utc>> {
    items
        .iter()
        .filter_map(|d| match d {
            Due::Rotate { at, .. } => Some(*at),
            _ => None,
        })
        .collect()
}

#[test]
fn due_rotates_now_without_a_current_credential() {
    let inv = inventory(&["alpha"], "{}");
    let acc = &inv.accounts["alpha"];
    let now = at(0, 0, 30);
    let items = due(acc, &account_state(0, None, false), &[], now);
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(
        matches!(items[0], Due::Rotate { at, .. } if at == now),
        "{items:?}"
    );

    // A retiring credential alone is no current one either.
    let old = cred(1, CredState::Retiring, at(0, 0, 0), Some(at(0, 0, 40)));
    let items = due(acc, &account_state(0, None, false), &[&old], now);
    assert_eq!(rotations(&items), vec![now], "{items:?}");
}

#[test]
fn due_rotates_a_current_credential_at_the_next_fire_after_its_issue() {
    let inv = inventory(&["alpha"], "{}");
    let acc = &inv.accounts["alpha"];
    let cur = cred(1, CredState::Current, at(0, 0, 30), None);
    let items = due(acc, &account_state(0, None, false), &[&cur], at(0, 0, 45));
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(
        matches!(items[0], Due::Rotate { at: t, .. } if t == at(0, 1, 0)),
        "{items:?}"
    );
}

#[test]
fn due_has_no_rotation_for_a_suspended_account() {
    let inv = inventory(&["alpha"], "{}");
    let acc = &inv.accounts["alpha"];
    let now = at(0, 0, 30);
    assert!(due(acc, &account_state(0, None, true), &[], now).is_empty());
    let cur = cred(1, CredState::Current, at(0, 0, 0), None);
    assert!(due(acc, &account_state(0, None, true), &[&cur], now).is_empty());
    assert!(due(acc, &account_state(2, Some(now), true), &[&cur], now).is_empty());
    // A suspended account's retiring credential still retires on time.
    let old = cred(1, CredState::Retiring, at(0, 0, 0), Some(at(0, 0, 40)));
    let items = due(acc, &account_state(0, None, true), &[&old], now);
    assert_eq!(
        items,
        vec![Due::Retire {
            at: at(0, 0, 40),
            cred: 1
        }]
    );
}

#[test]
fn due_retires_a_retiring_credential_when_its_overlap_ends() {
    let inv = inventory(&["alpha"], "{}");
    let acc = &inv.accounts["alpha"];
    let old = cred(1, CredState::Retiring, at(0, 0, 0), Some(at(0, 1, 20)));
    let cur = cred(2, CredState::Current, at(0, 1, 0), None);
    let items = due(
        acc,
        &account_state(0, None, false),
        &[&old, &cur],
        at(0, 1, 5),
    );
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(
        items[0],
        Due::Retire {
            at: at(0, 1, 20),
            cred: 1
        }
    );
    assert_eq!(rotations(&items), vec![at(0, 2, 0)]);
    assert!(
        items.windows(2).all(|w| w[0].at() <= w[1].at()),
        "earliest first"
    );
}

#[test]
fn due_retries_a_failed_rotation_at_retry_at() {
    let inv = inventory(&["alpha"], "{}");
    let acc = &inv.accounts["alpha"];
    let cur = cred(1, CredState::Current, at(0, 0, 0), None);
    let retry = at(0, 1, 10);
    let items = due(
        acc,
        &account_state(1, Some(retry), false),
        &[&cur],
        at(0, 1, 0),
    );
    assert_eq!(rotations(&items), vec![retry], "{items:?}");
    // Even when the schedule fires earlier than the retry.
    let later = at(0, 5, 0);
    let items = due(
        acc,
        &account_state(3, Some(later), false),
        &[&cur],
        at(0, 1, 0),
    );
    assert_eq!(rotations(&items), vec![later], "{items:?}");
}

/// Invariant 5: no hot retry loop when the account has no current credential.
#[test]
fn due_without_a_current_credential_after_a_failure_waits_for_retry_at() {
    let inv = inventory(&["alpha"], "{}");
    let acc = &inv.accounts["alpha"];
    let retry = at(0, 0, 40);
    let items = due(
        acc,
        &account_state(1, Some(retry), false),
        &[],
        at(0, 0, 30),
    );
    assert_eq!(rotations(&items), vec![retry], "{items:?}");
}

// ---------------------------------------------------------------------------
// Never lock anyone out (issue 7).

/// A saga that panics (a catalog value nobody expected) records a failure and
/// frees its account: the next attempt runs after the backoff.
#[tokio::test]
async fn a_panicking_saga_frees_its_account_and_records_a_failure() {
    let h = Harness::new(&["alpha"], "{ retry_initial: 5s, retry_max: 1m }").await;
    h.engine.panic_create.store(1, Ordering::SeqCst);
    let running = h.start();
    h.wait_failures("alpha", 1).await;
    let state = h.state("alpha").await;
    assert!(
        state
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("injected panic")),
        "{state:?}"
    );
    // The lease was released and the account is not stuck as busy.
    h.clock.set(state.retry_at.unwrap());
    h.wait_current("alpha", 2).await;
    h.check_invariants("alpha").await;
    running.stop().await;
}

/// A retired login that cannot be dropped is refused and recorded as stuck;
/// it never blocks the next issue.
#[tokio::test]
async fn a_login_that_cannot_be_dropped_is_stuck_not_a_lockout() {
    let h = Harness::new(&["alpha"], "{ retry_initial: 5s, retry_max: 1m }").await;
    let running = h.start();
    h.wait_current("alpha", 1).await;
    let v1 = h.cred("alpha", 1).await;
    h.engine.fail_drop.store(1000, Ordering::SeqCst);
    h.clock.set(at(0, 1, 0));
    h.wait_current("alpha", 2).await;
    // The overlap ends: v1 is refused, its drop fails and is recorded as stuck.
    h.clock.set(at(0, 1, 20));
    eventually("v1 revoked", || async {
        h.cred("alpha", 1).await.state == CredState::Revoked
    })
    .await;
    let pw1 = h.engine.lock().logins[&v1.username]
        .password
        .clone()
        .unwrap();
    assert!(
        !h.engine.accepts(&v1.username, &pw1),
        "v1 no longer logs in"
    );
    let stuck = h.ctx.ledger.stuck_items(Some("alpha")).await.unwrap();
    assert!(
        stuck
            .iter()
            .any(|i| i.kind == "drop-login" && i.subject == v1.username),
        "{stuck:?}"
    );
    let status = crate::api::statuses(&h.ctx.inventory, &h.ctx.ledger, h.clock.now())
        .await
        .unwrap();
    assert_eq!(status[0].stuck.len(), 1, "status shows the stuck item");
    // The next rotations are issued anyway.
    h.clock.set(at(0, 2, 0));
    h.wait_current("alpha", 3).await;
    h.clock.set(at(0, 3, 0));
    h.wait_current("alpha", 4).await;
    let held = h.store.held("alpha").unwrap();
    assert!(h.engine.accepts(&held.username, &held.password));
    // Once the drop works again, housekeeping clears the item.
    h.engine.fail_drop.store(0, Ordering::SeqCst);
    h.clock.set(at(0, 3, 30));
    eventually("stuck items cleared", || async {
        h.ctx
            .ledger
            .stuck_items(Some("alpha"))
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    assert!(!h.engine.lock().logins.contains_key(&v1.username));
    running.stop().await;
}

/// While rotations fail, the expiry guard extends the current credential step
/// by step, never beyond `max_lifetime`; `status` says so.
#[tokio::test]
async fn the_expiry_guard_extends_the_current_credential_up_to_max_lifetime() {
    let h = Harness::new(&["alpha"], "{ retry_initial: 5s, retry_max: 1m }").await;
    let running = h.start();
    h.wait_current("alpha", 1).await;
    let v1 = h.cred("alpha", 1).await;
    let pw1 = h.store.held("alpha").unwrap().password;
    // The store refuses every write from now on.
    h.store.fail_publish.store(1_000_000, Ordering::SeqCst);
    // Walk the clock forward well past v1's original expiry, letting every
    // retry run.
    let mut t = at(0, 1, 0);
    let end = v1.expires_at + chrono::Duration::hours(3);
    while t < end {
        h.clock.set(t);
        settle().await;
        t += chrono::Duration::minutes(10);
    }
    let extended = h.cred("alpha", 1).await;
    assert_eq!(extended.state, CredState::Current);
    assert!(
        extended.expires_at > end,
        "v1 was extended past the outage so far: {} vs {end}",
        extended.expires_at
    );
    assert!(
        h.engine.accepts(&v1.username, &pw1),
        "the store's credential still logs in"
    );
    let state = h.state("alpha").await;
    assert!(state.extended_until.is_some() && state.extended_reason.is_some());
    let max = v1.issued_at + to_chrono(h.account("alpha").max_lifetime);
    assert!(extended.expires_at <= max, "never beyond max_lifetime");
    // The store comes back: the next retry rotates and clears the extension.
    h.store.fail_publish.store(0, Ordering::SeqCst);
    h.clock.set(t + chrono::Duration::minutes(2));
    eventually("a new credential is current", || async {
        h.current_version("alpha").await.is_some_and(|v| v > 1)
    })
    .await;
    eventually("extension cleared", || async {
        h.state("alpha").await.extended_until.is_none()
    })
    .await;
    running.stop().await;
}

/// Break-glass sticks: a rotate-all (SIGUSR1) and recovery skip a suspended
/// account; only an explicit rotate lifts the suspension.
#[tokio::test]
async fn break_glass_survives_rotate_all_until_an_explicit_rotate() {
    let h = Harness::new(&["alpha", "beta"], "{}").await;
    let running = h.start();
    h.wait_current("alpha", 1).await;
    h.wait_current("beta", 1).await;
    let (reply, revoked) = oneshot::channel();
    running
        .control
        .send(Control::Revoke {
            account: "alpha".into(),
            previous_only: false,
            reply,
        })
        .await
        .unwrap();
    let revoked = revoked.await.unwrap().unwrap();
    assert_eq!(revoked.len(), 1);
    assert!(h.state("alpha").await.suspended);

    running.rotate_now(&[]).await;
    h.wait_current("beta", 2).await;
    settle().await;
    assert_eq!(
        h.current_version("alpha").await,
        None,
        "alpha stays revoked"
    );
    // A scheduled fire does not lift it either.
    h.clock.set(at(0, 1, 0));
    h.wait_current("beta", 3).await;
    settle().await;
    assert_eq!(h.current_version("alpha").await, None);
    assert!(h.state("alpha").await.suspended);

    let (reply, result) = oneshot::channel();
    running
        .control
        .send(Control::Rotate {
            account: "alpha".into(),
            reply,
        })
        .await
        .unwrap();
    let r = result.await.unwrap().unwrap();
    assert_eq!(r.version, 2);
    assert!(!h.state("alpha").await.suspended);
    h.check_invariants("alpha").await;
    running.stop().await;
}

/// An operator's rotation runs in a task the scheduler owns: dropping the
/// request (a client that disconnected) does not cancel it.
#[tokio::test]
async fn an_explicit_rotation_finishes_when_its_caller_goes_away() {
    let h = Harness::new(&["alpha"], "{}").await;
    let running = h.start();
    h.wait_current("alpha", 1).await;
    h.engine.close_gate();
    let (reply, result) = oneshot::channel();
    running
        .control
        .send(Control::Rotate {
            account: "alpha".into(),
            reply,
        })
        .await
        .unwrap();
    eventually("the rotation is in flight", || async {
        h.engine.in_flight() == 1
    })
    .await;
    drop(result);
    h.engine.open_gate();
    h.wait_current("alpha", 2).await;
    h.check_invariants("alpha").await;
    running.stop().await;
}

/// Steps after promotion are recorded with it: a crash right after the
/// promotion leaves the success on record (no early second rotation) and the
/// consumer notification queued; recovery sends it.
#[tokio::test]
async fn a_crash_right_after_promotion_neither_rotates_early_nor_loses_the_notification() {
    let h = Harness::new(&["alpha"], "{ retry_initial: 5s, retry_max: 1m }").await;
    let account = h.account("alpha").clone();
    // Earlier failures are on record.
    h.ctx
        .ledger
        .record_failure("alpha", t0(), "boom", t0())
        .await
        .unwrap();
    let crashing = Context {
        inventory: h.ctx.inventory.clone(),
        engines: h.ctx.engines.clone(),
        stores: h.ctx.stores.clone(),
        ledger: h.ctx.ledger.clone(),
        clock: h.ctx.clock.clone(),
        take_over: Default::default(),
        crash_after: Some(CredState::Current),
    };
    let err = rotation::rotate(&crashing, &account).await.unwrap_err();
    assert!(
        matches!(err, RotationError::Crash(CredState::Current)),
        "{err}"
    );
    assert_eq!(h.current_version("alpha").await, Some(1));
    let state = h.state("alpha").await;
    assert_eq!(
        state.failures, 0,
        "the success is recorded with the promotion"
    );
    let live = h.ctx.ledger.live("alpha").await.unwrap();
    let refs: Vec<&Credential> = live.iter().collect();
    assert_eq!(
        rotations(&due(&account, &state, &refs, t0())),
        vec![at(0, 1, 0)],
        "the next rotation is the scheduled one, not a retry"
    );
    let outbox = h.ctx.ledger.outbox().await.unwrap();
    assert_eq!(outbox.len(), 1, "the notification is queued");
    assert_eq!(outbox[0].version, 1);
    rotation::recover_account(&h.ctx, &account).await.unwrap();
    assert!(
        h.ctx.ledger.outbox().await.unwrap().is_empty(),
        "recovery sent the notification"
    );
}

/// A reload that moves an account to another database retires its old
/// credentials in the database they were issued in, not in the new one.
#[tokio::test]
async fn a_credential_is_retired_in_the_database_it_was_issued_in() {
    let two_dbs = |db: &str| {
        let yaml = format!(
            r#"version: 1
environment: development
defaults: {{ schedule: "0 * * * * *", overlap: 20s, strategy: ephemeral, store: local }}
databases:
  main: {{ engine: postgres, url: "postgres://credrotd_admin@127.0.0.1:1/main" }}
  other: {{ engine: postgres, url: "postgres://credrotd_admin@127.0.0.1:1/other" }}
stores:
  local: {{ kind: file, dir: /nonexistent/credrotd-test }}
accounts:
  alpha: {{ database: {db} }}
"#
        );
        Arc::new(
            crate::inventory::parse(Path::new("t.yaml"), &yaml)
                .unwrap()
                .inventory,
        )
    };
    let h = Harness::new(&["alpha"], "{}").await;
    let other = Arc::new(MemEngine::new(h.ctx.clock.clone()));
    let mut engines = h.ctx.engines.clone();
    engines.insert("other".into(), other.clone() as Arc<dyn Engine>);
    let ctx = |inventory| Context {
        inventory,
        engines: engines.clone(),
        stores: h.ctx.stores.clone(),
        ledger: h.ctx.ledger.clone(),
        clock: h.ctx.clock.clone(),
        take_over: Default::default(),
        crash_after: None,
    };
    let before = ctx(two_dbs("main"));
    let acc = before.inventory.accounts["alpha"].clone();
    rotation::rotate(&before, &acc).await.unwrap();
    let v1 = h.cred("alpha", 1).await;
    assert_eq!(h.engine.names_of("alpha"), vec![v1.username.clone()]);

    // The reload moves alpha to `other`; its next rotation issues there.
    let after = ctx(two_dbs("other"));
    let moved = after.inventory.accounts["alpha"].clone();
    rotation::rotate(&after, &moved).await.unwrap();
    let v1 = h.cred("alpha", 1).await;
    assert_eq!(v1.state, CredState::Retiring);
    assert_eq!(other.names_of("alpha").len(), 1, "v2 lives in `other`");
    assert!(rotation::retire(&after, &moved, &v1, false).await.unwrap());
    assert!(
        h.engine.names_of("alpha").is_empty(),
        "v1 was dropped in `main`, where it was issued"
    );
    assert_eq!(other.names_of("alpha").len(), 1, "v2 is untouched");
}

/// A late rotation (after retries) that lands close to the next fire does not
/// let that fire cut its predecessor's overlap short: the fire waits.
#[test]
fn due_waits_for_the_predecessors_overlap_before_the_next_fire() {
    let inv = inventory(&["alpha"], "{}");
    let acc = &inv.accounts["alpha"];
    // v2 became current at 00:00:55 after retries; v1 retires at 00:01:15.
    let old = cred(1, CredState::Retiring, at(0, 0, 0), Some(at(0, 1, 15)));
    let cur = cred(2, CredState::Current, at(0, 0, 55), None);
    let items = due(
        acc,
        &account_state(0, None, false),
        &[&old, &cur],
        at(0, 0, 56),
    );
    assert_eq!(rotations(&items), vec![at(0, 1, 15)], "{items:?}");
    // Without a predecessor in its overlap the fire is on time.
    let items = due(acc, &account_state(0, None, false), &[&cur], at(0, 0, 56));
    assert_eq!(rotations(&items), vec![at(0, 1, 0)], "{items:?}");
}
