//! The rotation saga and start-up recovery.
//!
//! A rotation moves a new credential through `planned → created → verified →
//! published → current`, writing each state to the ledger before the side effect
//! that depends on it, then retires its predecessor when the overlap ends. Any
//! failure before `current` rolls the new login back and leaves the previous
//! credential current and valid. [`recover`] finishes or rolls back whatever a
//! crash left in a middle state, and drops login roles the ledger does not know.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{info, warn, Instrument};

use crate::clock::SharedClock;
use crate::engine::{Engine, EngineError, Engines, Login, SavedPassword};
use crate::inventory::{Account, Inventory, Strategy};
use crate::ledger::{CredState, Credential, Ledger, LedgerError, NewCredential};
use crate::schedule::{self, to_chrono};
use crate::secret::Secret;
use crate::store::{Publication, Store, StoreError, Stores};

/// How long a process may hold an account's lease for one saga step sequence.
pub const LEASE_TTL: Duration = Duration::from_secs(300);

/// Everything the saga talks to.
pub struct Context {
    pub inventory: Arc<Inventory>,
    pub engines: Engines,
    pub stores: Stores,
    pub ledger: Ledger,
    pub clock: SharedClock,
    /// Test hook: stop the saga right after the ledger records this state, as if
    /// the process had been killed there.
    #[doc(hidden)]
    pub crash_after: Option<CredState>,
}

/// Why a rotation, retirement or recovery failed.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("account {0} is busy: another credrotd process holds its lease")]
    Busy(String),
    #[error("account {0} is not in the inventory")]
    UnknownAccount(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("account {account}: no free login role name for this second")]
    NameExhausted { account: String },
    #[error("account {account}: credential v{version} is not retiring (it is {state})")]
    NotRetiring {
        account: String,
        version: i64,
        state: CredState,
    },
    #[doc(hidden)]
    #[error("simulated crash after state {0}")]
    Crash(CredState),
}

/// What a successful rotation produced.
#[derive(Debug, Clone)]
pub struct Rotated {
    pub account: String,
    pub version: i64,
    pub username: String,
    pub expires_at: DateTime<Utc>,
    /// The credential that is now retiring, and when its overlap ends.
    pub previous: Option<(String, DateTime<Utc>)>,
}

/// What recovery found for one account.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    pub rolled_back: Vec<String>,
    pub promoted: Vec<String>,
    pub orphans_dropped: Vec<String>,
    /// The account must rotate now: its current credential is unusable or a
    /// crash left the stores disagreeing.
    pub rotate_now: bool,
}

impl Context {
    pub fn account(&self, name: &str) -> Result<&Account, RotationError> {
        self.inventory
            .accounts
            .get(name)
            .ok_or_else(|| RotationError::UnknownAccount(name.to_owned()))
    }

    fn engine(&self, account: &Account) -> &Arc<dyn Engine> {
        // Validation guarantees every account's database exists and `engine::build`
        // builds one engine per database.
        &self.engines[&account.database]
    }

    fn stores_of(&self, account: &Account) -> Vec<Arc<dyn Store>> {
        account
            .stores
            .iter()
            .filter_map(|s| self.stores.get(s).cloned())
            .collect()
    }

    async fn event(&self, account: &str, version: Option<i64>, kind: &str, detail: &str) {
        if let Err(e) = self
            .ledger
            .event(self.clock.now(), account, version, kind, detail)
            .await
        {
            warn!(account, kind, error = %e, "cannot append to the event log");
        }
    }

    fn crash_point(&self, state: CredState) -> Result<(), RotationError> {
        if self.crash_after == Some(state) {
            return Err(RotationError::Crash(state));
        }
        Ok(())
    }

    /// Runs `f` holding the account's lease, waiting up to `wait` for it.
    pub async fn with_lease<T, F, Fut>(
        &self,
        account: &str,
        wait: Duration,
        f: F,
    ) -> Result<T, RotationError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, RotationError>>,
    {
        let holder = self.ledger.new_holder();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self
                .ledger
                .acquire(account, &holder, LEASE_TTL, self.clock.now())
                .await?
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RotationError::Busy(account.to_owned()));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Keep the lease while the saga runs, however long its steps take.
        let renew = async {
            loop {
                tokio::time::sleep(LEASE_TTL / 3).await;
                match self
                    .ledger
                    .acquire(account, &holder, LEASE_TTL, self.clock.now())
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => warn!(account, "lost the account's lease while working on it"),
                    Err(e) => warn!(account, error = %e, "cannot renew the account's lease"),
                }
            }
        };
        let out = tokio::select! {
            out = f() => out,
            never = renew => never,
        };
        if let Err(e) = self.ledger.release(account, &holder).await {
            warn!(account, error = %e, "cannot release lease; it expires on its own");
        }
        out
    }
}

/// Rotates one account: issues, verifies, publishes and promotes a new credential.
/// The caller holds the account's lease.
pub async fn rotate(ctx: &Context, account: &Account) -> Result<Rotated, RotationError> {
    let span =
        tracing::info_span!("rotation", account = %account.name, version = tracing::field::Empty);
    rotate_in_span(ctx, account).instrument(span).await
}

async fn rotate_in_span(ctx: &Context, account: &Account) -> Result<Rotated, RotationError> {
    let engine = ctx.engine(account);
    let changes = engine.reconcile(account, true).await?;
    if !changes.is_empty() {
        info!(account = %account.name, changes = changes.len(), "reconciled scoped role");
        let detail: Vec<String> = changes.iter().map(|c| c.0.clone()).collect();
        ctx.event(&account.name, None, "reconciled", &detail.join("; "))
            .await;
    }

    // Recover anything a crash left for this account before adding to it (and
    // sweep login roles the ledger does not know), whoever asked for the rotation.
    recover_account(ctx, account).await?;
    let live = ctx.ledger.live(&account.name).await?;
    let current = live
        .iter()
        .rev()
        .find(|c| c.state == CredState::Current)
        .cloned();

    // At most two credentials may be valid: a predecessor still in its overlap is
    // retired now. Its successor is current, so this never strands a consumer
    // that follows the store.
    for old in live.iter().filter(|c| c.state == CredState::Retiring) {
        info!(account = %account.name, version = old.version, username = %old.username, "overlap cut short by a new rotation");
        retire(ctx, account, old, false).await?;
    }

    let now = ctx.clock.now();
    let username = choose_username(ctx, engine.as_ref(), account, current.as_ref(), now).await?;
    let expires_at = schedule::expiry(
        now,
        &account.schedule,
        account.overlap,
        account.expiry_margin,
        account.lifetime,
    );
    let cred = ctx
        .ledger
        .plan(
            NewCredential {
                account: &account.name,
                database: &account.database,
                strategy: account.strategy.as_str(),
                username: &username,
                issued_at: now,
                expires_at,
            },
            now,
        )
        .await?;
    tracing::Span::current().record("version", cred.version);
    ctx.event(
        &account.name,
        Some(cred.version),
        "planned",
        &format!("username={username}"),
    )
    .await;
    ctx.crash_point(CredState::Planned)?;

    // A static role's password is replaced in place; keep the old verifier (when
    // the admin may read it) to put back if verification or publishing fails.
    let saved = match &account.strategy {
        Strategy::Static { role, .. } => engine.saved_password(role).await.unwrap_or_else(|e| {
            warn!(account = %account.name, error = %e, "cannot save the static role's password verifier");
            None
        }),
        _ => None,
    };
    let password = Secret::generate();
    let login = Login {
        username: &username,
        password: &password,
        valid_until: expires_at,
    };
    let issued = match &account.strategy {
        Strategy::Ephemeral => engine.create_login(account, &login).await,
        Strategy::Alternating => match engine.ensure_fixed_login(account, &username).await {
            Ok(()) => engine.set_password(account, &login).await,
            Err(e) => Err(e),
        },
        Strategy::Static { .. } => engine.set_password(account, &login).await,
    };
    if let Err(e) = issued {
        // The engine's transaction did not commit: nothing to undo in the
        // database (and a role that already existed is not ours to drop).
        mark_aborted(ctx, account, &cred, CredState::Planned, &e.to_string()).await;
        return Err(e.into());
    }
    step(ctx, &cred, CredState::Planned, CredState::Created).await?;

    if let Err(e) = engine.verify(&username, &password).await {
        abort(
            ctx,
            account,
            &cred,
            CredState::Created,
            saved.as_ref(),
            &e.to_string(),
        )
        .await;
        return Err(e.into());
    }
    step(ctx, &cred, CredState::Created, CredState::Verified).await?;

    let endpoint = engine.endpoint();
    let publication = Publication {
        account: &account.name,
        path: &account.path,
        version: cred.version,
        username: &username,
        password: &password,
        endpoint: &endpoint,
        issued_at: now,
        expires_at,
    };
    // Publishing is two steps over all of the account's stores (issue #3):
    // 1. publish to each store (two-phase stores such as AWS only stage it, so
    //    they go first), recording in the ledger after each one which stores
    //    hold it, so that recovery after a crash can finish instead of repeating;
    // 2. once every store holds it, promote it in each store (AWSCURRENT).
    // If any store refuses either step, every store is reverted (newest first),
    // the new login is rolled back and the previous credential stays current.
    let mut stores = ctx.stores_of(account);
    stores.sort_by_key(|s| !s.two_phase());
    let mut published: Vec<(Arc<dyn Store>, crate::store::Undo)> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut failure: Option<StoreError> = None;
    for store in &stores {
        match store.publish(&publication).await {
            Ok(undo) => {
                published.push((store.clone(), undo));
                names.push(store.name().to_owned());
                ctx.ledger
                    .set_stores(&cred, &names, ctx.clock.now())
                    .await?;
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if failure.is_none() {
        for store in &stores {
            if let Err(e) = store
                .promote(&account.name, &account.path, cred.version)
                .await
            {
                failure = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failure {
        // Put back what the stores held, newest first, so that no store is left
        // pointing at a login we are about to drop.
        let mut still_held = Vec::new();
        for (s, undo) in published.into_iter().rev() {
            if let Err(re) = s.revert(undo).await {
                warn!(store = s.name(), error = %re, "cannot revert store after a failed publish");
                still_held.push(s.name().to_owned());
            }
        }
        // The ledger must not claim that reverted stores hold it, or recovery
        // would promote it.
        if let Err(le) = ctx
            .ledger
            .set_stores(&cred, &still_held, ctx.clock.now())
            .await
        {
            warn!(account = %account.name, error = %le, "cannot record the reverted stores");
        }
        if still_held.is_empty() {
            abort(
                ctx,
                account,
                &cred,
                CredState::Verified,
                saved.as_ref(),
                &e.to_string(),
            )
            .await;
        } else {
            // A store may still serve the new credential: keep its login alive
            // and leave the ledger at `verified`, so that recovery asks the
            // stores and promotes or rolls back.
            warn!(account = %account.name, version = cred.version, stores = ?still_held, "left for recovery: a store could not be reverted");
        }
        return Err(e.into());
    }
    drop(published);
    ctx.ledger
        .advance_noting(
            &cred,
            CredState::Verified,
            CredState::Published,
            ctx.clock.now(),
            "published",
            &format!("stores={}", names.join(",")),
        )
        .await?;
    ctx.crash_point(CredState::Published)?;

    let promoted_at = ctx.clock.now();
    let retire_at = promoted_at + to_chrono(account.overlap);
    ctx.ledger
        .promote_noting(
            &cred,
            current.as_ref(),
            retire_at,
            promoted_at,
            Some(&format!(
                "username={username} expires_at={}",
                expires_at.to_rfc3339()
            )),
        )
        .await?;
    info!(username = %username, expires_at = %expires_at, "credential is current");
    ctx.crash_point(CredState::Current)?;
    let next = account.schedule.next_after(now);
    ctx.ledger
        .record_success(&account.name, promoted_at, next)
        .await?;
    crate::notify::consumers(&ctx.inventory, account, cred.version).await;

    let mut previous = None;
    if let Some(prev) = current {
        let prev = ctx.ledger.get(prev.id).await?;
        // A static role's old password is gone the moment the new one is set;
        // a zero overlap retires at once.
        if matches!(account.strategy, Strategy::Static { .. }) || account.overlap.is_zero() {
            retire(ctx, account, &prev, false).await?;
        } else {
            // A promotion that came late (after failed attempts) must not let the
            // predecessor's own expiry cut the overlap short: extend it to the
            // overlap's end. Best effort: the new credential is already current.
            if prev.expires_at < retire_at && prev.strategy != "adopted" {
                match ctx
                    .engine(account)
                    .extend_login(&prev.username, retire_at)
                    .await
                {
                    Ok(()) => {
                        if let Err(e) = ctx
                            .ledger
                            .set_expires_at(&prev, retire_at, ctx.clock.now())
                            .await
                        {
                            warn!(account = %account.name, error = %e, "cannot record the extended expiry");
                        }
                        info!(previous = %prev.username, until = %retire_at, "extended the previous credential's expiry to the end of its overlap");
                    }
                    Err(e) => {
                        warn!(account = %account.name, previous = %prev.username, error = %e, "cannot extend the previous credential to the end of its overlap")
                    }
                }
            }
            info!(previous = %prev.username, until = %retire_at, "previous credential stays valid during the overlap");
            previous = Some((prev.username.clone(), retire_at));
        }
    }
    Ok(Rotated {
        account: account.name.clone(),
        version: cred.version,
        username,
        expires_at,
        previous,
    })
}

async fn step(
    ctx: &Context,
    cred: &Credential,
    from: CredState,
    to: CredState,
) -> Result<(), RotationError> {
    ctx.ledger.advance(cred, from, to, ctx.clock.now()).await?;
    ctx.crash_point(to)
}

/// Rolls a failed new credential back and records why. Best effort: whatever
/// fails here is finished by the next recovery.
async fn abort(
    ctx: &Context,
    account: &Account,
    cred: &Credential,
    state: CredState,
    saved: Option<&SavedPassword>,
    reason: &str,
) {
    warn!(account = %account.name, version = cred.version, error = %reason, "rotation failed; rolling back");
    if let Err(e) = rollback_login(ctx, account, cred, saved).await {
        warn!(account = %account.name, version = cred.version, error = %e, "rollback incomplete; recovery will finish it");
        return;
    }
    mark_aborted(ctx, account, cred, state, reason).await;
}

async fn mark_aborted(
    ctx: &Context,
    account: &Account,
    cred: &Credential,
    state: CredState,
    reason: &str,
) {
    if let Err(e) = ctx
        .ledger
        .advance_noting(
            cred,
            state,
            CredState::Aborted,
            ctx.clock.now(),
            "aborted",
            reason,
        )
        .await
    {
        warn!(account = %account.name, error = %e, "cannot record the rollback");
    }
}

/// Undoes the database side of a credential that never became current.
async fn rollback_login(
    ctx: &Context,
    account: &Account,
    cred: &Credential,
    saved: Option<&SavedPassword>,
) -> Result<(), RotationError> {
    let engine = ctx.engine(account);
    match &account.strategy {
        Strategy::Ephemeral => engine.drop_login(account, &cred.username).await?,
        Strategy::Alternating => {
            // Never disable the role a live current credential uses.
            let live = ctx.ledger.live(&account.name).await?;
            if !live
                .iter()
                .any(|c| c.id != cred.id && c.username == cred.username && !c.state.is_middle())
            {
                engine.disable_login(&cred.username).await?;
            }
        }
        // Put the old password back if we could save it; otherwise the old one
        // is gone and the next rotation sets a fresh one.
        Strategy::Static { .. } => {
            if let Some(saved) = saved {
                engine.restore_password(&cred.username, saved).await?;
                info!(account = %account.name, username = %cred.username, "restored the static role's previous password");
            }
        }
    }
    Ok(())
}

async fn choose_username(
    ctx: &Context,
    engine: &dyn Engine,
    account: &Account,
    current: Option<&Credential>,
    now: DateTime<Utc>,
) -> Result<String, RotationError> {
    match &account.strategy {
        Strategy::Static { role, .. } => Ok(role.clone()),
        Strategy::Alternating => {
            let a = format!("{}_a", account.name);
            let b = format!("{}_b", account.name);
            Ok(match current {
                Some(c) if c.username == a => b,
                _ => a,
            })
        }
        Strategy::Ephemeral => {
            let used: Vec<String> = ctx
                .ledger
                .credentials(&account.name)
                .await?
                .into_iter()
                .map(|c| c.username)
                .collect();
            // One name per second; a second rotation within the same second takes
            // the next free second.
            for offset in 0..120 {
                let t = now + chrono::Duration::seconds(offset);
                let name = format!("{}_{}", account.name, t.format("%Y%m%d%H%M%S"));
                if !used.contains(&name) && engine.login_info(&name).await?.is_none() {
                    return Ok(name);
                }
            }
            Err(RotationError::NameExhausted {
                account: account.name.clone(),
            })
        }
    }
}

/// Retires a credential: refuses new logins, ends its sessions after the grace,
/// and drops the login role (ephemeral). Unless `forced` (break-glass), refuses to
/// retire a credential that has no current successor (invariant 2).
pub async fn retire(
    ctx: &Context,
    account: &Account,
    cred: &Credential,
    forced: bool,
) -> Result<(), RotationError> {
    let cred = ctx.ledger.get(cred.id).await?;
    if !cred.state.is_live() {
        return Ok(());
    }
    if !forced {
        let live = ctx.ledger.live(&account.name).await?;
        let has_successor = live
            .iter()
            .any(|c| c.state == CredState::Current && c.version > cred.version);
        if !has_successor {
            return Err(RotationError::NotRetiring {
                account: account.name.clone(),
                version: cred.version,
                state: cred.state,
            });
        }
    }
    if let Err(e) = revoke_login(ctx, account, &cred).await {
        crate::telemetry::revocation(&account.name, false);
        return Err(e);
    }
    crate::telemetry::revocation(&account.name, true);
    ctx.ledger
        .advance_noting(
            &cred,
            cred.state,
            CredState::Revoked,
            ctx.clock.now(),
            "revoked",
            &format!("username={}", cred.username),
        )
        .await?;
    info!(account = %account.name, version = cred.version, username = %cred.username, "credential revoked");
    Ok(())
}

async fn revoke_login(
    ctx: &Context,
    account: &Account,
    cred: &Credential,
) -> Result<(), RotationError> {
    let engine = ctx.engine(account);
    let is_static = matches!(account.strategy, Strategy::Static { .. });
    // A static role keeps its name across versions: only its newest credential may
    // touch the role, and only in a break-glass revoke of the current one.
    if is_static && cred.state != CredState::Current {
        return Ok(());
    }
    // Refusing new logins is what revokes the credential; it must succeed.
    engine.disable_login(&cred.username).await?;
    // Ending sessions and dropping the role are clean-up: if they fail (an object
    // the login owns in another database, no right to terminate backends), the
    // credential is still revoked, and recovery's orphan sweep retries the drop.
    // They must not block the account's next rotation.
    if account.revoke.terminate_sessions {
        if !account.revoke.grace.is_zero() {
            let until = ctx.clock.now() + to_chrono(account.revoke.grace);
            ctx.clock.sleep_until(until).await;
        }
        match engine.terminate_sessions(&cred.username).await {
            Ok(0) => {}
            Ok(n) => {
                info!(account = %account.name, username = %cred.username, sessions = n, "ended sessions of revoked login")
            }
            Err(e) => {
                warn!(account = %account.name, username = %cred.username, error = %e, "cannot end the revoked login's sessions")
            }
        }
    }
    if matches!(account.strategy, Strategy::Ephemeral) {
        if let Err(e) = engine.drop_login(account, &cred.username).await {
            warn!(account = %account.name, username = %cred.username, error = %e, "revoked login refuses logins but could not be dropped; recovery retries");
        }
    }
    Ok(())
}

/// Break-glass: revokes the account's retiring credentials, and unless
/// `previous_only` its current one too, then suspends the account until an
/// explicit rotate. The caller holds the lease.
pub async fn revoke(
    ctx: &Context,
    account: &Account,
    previous_only: bool,
) -> Result<Vec<String>, RotationError> {
    let mut revoked = Vec::new();
    if !previous_only {
        // Suspend first: a crash half-way must not lead to a re-issue on restart.
        ctx.ledger.set_suspended(&account.name, true).await?;
    }
    let live = ctx.ledger.live(&account.name).await?;
    for cred in &live {
        let take = match cred.state {
            CredState::Retiring => true,
            _ => !previous_only,
        };
        if !take {
            continue;
        }
        if cred.state.is_middle() {
            rollback_login(ctx, account, cred, None).await?;
            ctx.ledger
                .advance(cred, cred.state, CredState::Aborted, ctx.clock.now())
                .await?;
        } else {
            retire(ctx, account, cred, true).await?;
        }
        revoked.push(cred.username.clone());
    }
    if !previous_only {
        ctx.event(
            &account.name,
            None,
            "suspended",
            "break-glass revoke; rotate to issue a new credential",
        )
        .await;
    }
    Ok(revoked)
}

/// Recovers every account of the inventory (start-up reconciliation).
pub async fn recover(ctx: &Context) -> Vec<(String, Result<Recovered, RotationError>)> {
    use futures::stream::{self, StreamExt};
    // A database that does not answer quickly is skipped rather than waited for
    // once per account: its accounts are recovered before their next rotation.
    let mut down = std::collections::BTreeMap::new();
    for (name, engine) in &ctx.engines {
        match tokio::time::timeout(Duration::from_secs(5), engine.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                down.insert(name.clone(), e.to_string());
            }
            Err(_) => {
                down.insert(
                    name.clone(),
                    format!("database {name} did not answer within 5s"),
                );
            }
        }
    }
    let down = &down;
    type Job<'a> = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = (String, Result<Recovered, RotationError>)>
                + Send
                + 'a,
        >,
    >;
    let mut jobs: Vec<Job<'_>> = Vec::new();
    for account in ctx.inventory.accounts.values() {
        jobs.push(Box::pin(async move {
            let r = match down.get(&account.database) {
                Some(why) => Err(RotationError::Unavailable(why.clone())),
                None => {
                    ctx.with_lease(&account.name, Duration::from_secs(30), || {
                        recover_account(ctx, account)
                    })
                    .await
                }
            };
            (account.name.clone(), r)
        }));
    }
    stream::iter(jobs)
        .buffer_unordered(ctx.inventory.rotation.concurrency)
        .collect()
        .await
}

/// Finishes or rolls back what a crash left for one account and drops login roles
/// that the ledger does not know. The caller holds the lease.
pub async fn recover_account(ctx: &Context, account: &Account) -> Result<Recovered, RotationError> {
    let engine = ctx.engine(account);
    let mut report = Recovered::default();
    for cred in ctx.ledger.live(&account.name).await? {
        match cred.state {
            CredState::Planned | CredState::Created => {
                // The password died with the process; no store has seen it.
                rollback_login(ctx, account, &cred, None).await?;
                ctx.ledger
                    .advance_noting(
                        &cred,
                        cred.state,
                        CredState::Aborted,
                        ctx.clock.now(),
                        "rolled-back",
                        &format!("recovered from state {}", cred.state),
                    )
                    .await?;
                report.rolled_back.push(cred.username.clone());
                if matches!(account.strategy, Strategy::Static { .. }) {
                    // The role's password may already be the lost one.
                    report.rotate_now = true;
                }
            }
            CredState::Verified | CredState::Published => {
                let stores = ctx.stores_of(account);
                // A store holds it if it serves it, or if the ledger recorded
                // that the publish (for AWS: the AWSPENDING stage) succeeded.
                let mut held: Vec<&Arc<dyn Store>> = Vec::new();
                for s in &stores {
                    if cred.stores.iter().any(|n| n == s.name())
                        || s.current_version(&account.name, &account.path).await?
                            == Some(cred.version)
                    {
                        held.push(s);
                    }
                }
                let holders = held.len();
                if holders == 0 {
                    // No store serves it; drop any stage a crash left behind.
                    for s in &stores {
                        s.discard(&account.name, &account.path, cred.version)
                            .await?;
                    }
                    rollback_login(ctx, account, &cred, None).await?;
                    ctx.ledger
                        .advance_noting(
                            &cred,
                            cred.state,
                            CredState::Aborted,
                            ctx.clock.now(),
                            "rolled-back",
                            "no store holds it",
                        )
                        .await?;
                    report.rolled_back.push(cred.username.clone());
                    if matches!(account.strategy, Strategy::Static { .. }) {
                        report.rotate_now = true;
                    }
                } else {
                    // Some store serves it and it logged in: finish the publish
                    // (promote it in every store that holds it, idempotent) and
                    // make it current so that its predecessor retires after a
                    // full overlap.
                    for s in &held {
                        s.promote(&account.name, &account.path, cred.version)
                            .await?;
                    }
                    if cred.state == CredState::Verified {
                        ctx.ledger
                            .advance(
                                &cred,
                                CredState::Verified,
                                CredState::Published,
                                ctx.clock.now(),
                            )
                            .await?;
                    }
                    let now = ctx.clock.now();
                    let prev = ctx
                        .ledger
                        .live(&account.name)
                        .await?
                        .into_iter()
                        .rev()
                        .find(|c| c.state == CredState::Current);
                    ctx.ledger
                        .promote(&cred, prev.as_ref(), now + to_chrono(account.overlap), now)
                        .await?;
                    ctx.ledger
                        .record_success(
                            &account.name,
                            now,
                            account.schedule.next_after(cred.issued_at),
                        )
                        .await?;
                    ctx.event(
                        &account.name,
                        Some(cred.version),
                        "recovered",
                        &format!("promoted; {holders} of {} stores held it", stores.len()),
                    )
                    .await;
                    report.promoted.push(cred.username.clone());
                    // The crash may have come before consumers were told.
                    crate::notify::consumers(&ctx.inventory, account, cred.version).await;
                    if holders < stores.len() {
                        report.rotate_now = true;
                    }
                    if let Some(prev) = prev {
                        if matches!(account.strategy, Strategy::Static { .. })
                            || account.overlap.is_zero()
                        {
                            let prev = ctx.ledger.get(prev.id).await?;
                            retire(ctx, account, &prev, false).await?;
                        }
                    }
                }
            }
            _ => {}
        }
    }

    // Login roles this account owns in the database that the ledger does not list
    // as live were left by a crash before the ledger learned of them, or by a
    // lost ledger: nobody holds their password, so drop them.
    let live = ctx.ledger.live(&account.name).await?;
    for name in engine.managed_logins(account).await? {
        if !live.iter().any(|c| c.username == name) {
            engine.drop_login(account, &name).await?;
            ctx.event(
                &account.name,
                None,
                "orphan-dropped",
                &format!("username={name}"),
            )
            .await;
            warn!(account = %account.name, username = %name, "dropped a login role the ledger does not know");
            report.orphans_dropped.push(name);
        }
    }

    // An alternating role that can log in although no live credential uses it
    // holds a password nobody knows: refuse its logins until its next turn.
    if matches!(account.strategy, Strategy::Alternating) {
        for suffix in ["a", "b"] {
            let name = format!("{}_{suffix}", account.name);
            if live.iter().any(|c| c.username == name) {
                continue;
            }
            if engine.login_info(&name).await?.is_some_and(|i| i.can_login) {
                engine.disable_login(&name).await?;
                ctx.event(
                    &account.name,
                    None,
                    "orphan-disabled",
                    &format!("username={name}"),
                )
                .await;
                warn!(account = %account.name, username = %name, "disabled an alternating login the ledger does not know as live");
                report.orphans_dropped.push(name);
            }
        }
    }

    // A current credential that no longer logs in (dropped or expired behind our
    // back) must be replaced now.
    if let Some(cur) = live.iter().rev().find(|c| c.state == CredState::Current) {
        let adopted = cur.strategy == "adopted";
        if !adopted {
            match engine.login_info(&cur.username).await? {
                Some(info)
                    if info.can_login && info.valid_until.is_none_or(|v| v > ctx.clock.now()) => {}
                _ => {
                    warn!(account = %account.name, username = %cur.username, "current credential cannot log in; rotating now");
                    report.rotate_now = true;
                }
            }
        }
    }
    Ok(report)
}

/// Records an existing static role as the account's current credential without
/// changing it (`adopt: true`). Its first rotation is the next scheduled fire.
pub async fn adopt(ctx: &Context, account: &Account) -> Result<(), RotationError> {
    let Strategy::Static { role, adopt: true } = &account.strategy else {
        return Ok(());
    };
    let now = ctx.clock.now();
    let next = account.schedule.next_after(now);
    let cred = ctx
        .ledger
        .plan(
            NewCredential {
                account: &account.name,
                database: &account.database,
                strategy: "adopted",
                username: role,
                issued_at: now,
                expires_at: next.unwrap_or(now),
            },
            now,
        )
        .await?;
    for (from, to) in [
        (CredState::Planned, CredState::Created),
        (CredState::Created, CredState::Verified),
        (CredState::Verified, CredState::Published),
    ] {
        ctx.ledger.advance(&cred, from, to, now).await?;
    }
    ctx.ledger.promote(&cred, None, now, now).await?;
    ctx.ledger.record_success(&account.name, now, next).await?;
    ctx.event(
        &account.name,
        Some(cred.version),
        "adopted",
        &format!("role={role}; first rotation at the next scheduled fire"),
    )
    .await;
    Ok(())
}
