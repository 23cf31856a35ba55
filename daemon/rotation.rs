//! The rotation saga as a state machine, start-up recovery, housekeeping and the
//! expiry guard.
//!
//! A credential moves through `planned → created → verified → published →
//! current → retiring → revoked` (or `aborted`), and the ledger records each
//! state before the side effect that depends on it. Each move is one small,
//! idempotent step; [`resume`] drives a credential that a crash (or a failure)
//! left in a middle state to a resting state through the same steps the forward
//! path uses, so recovery is not a second program.
//!
//! Issuing never waits on housekeeping: a retired login that cannot be dropped,
//! a grant that cannot be revoked or a declared object that no longer exists
//! becomes a *stuck item* in the ledger, retried with backoff by
//! [`housekeep`], and the next credential is still issued. While rotations fail
//! and the database answers, [`guard_expiry`] extends the current credential
//! step by step, never beyond the account's `max_lifetime`.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use tracing::{error, info, warn, Instrument};

use crate::clock::SharedClock;
use crate::engine::{Engine, EngineError, Engines, Login, SavedPassword};
use crate::inventory::{Account, Inventory, Strategy};
use crate::ledger::{CredState, Credential, Lease, Ledger, LedgerError, NewCredential};
use crate::schedule::{self, backoff, to_chrono};
use crate::secret::Secret;
use crate::store::{Publication, Store, StoreError, Stores};

/// How long a lease lasts without renewal. A saga renews it every third of this;
/// a holder that died is noticed at once (its instance file is unlocked), so the
/// TTL only matters for a process that hangs.
pub const LEASE_TTL: Duration = Duration::from_secs(60);

/// Everything the saga talks to.
pub struct Context {
    pub inventory: Arc<Inventory>,
    pub engines: Engines,
    pub stores: Stores,
    pub ledger: Ledger,
    pub clock: SharedClock,
    /// Take over accounts whose scoped role another ledger owns (`--take-over`).
    /// The daemon clears it after start-up recovery, so that two daemons
    /// started with it do not take accounts from each other forever.
    pub take_over: std::sync::atomic::AtomicBool,
    /// Test hook: stop the saga right after the ledger records this state, as if
    /// the process had been killed there.
    #[doc(hidden)]
    pub crash_after: Option<CredState>,
}

/// Who asked for a rotation. Only an operator naming the account lifts a
/// break-glass suspension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The cron schedule, a retry, or recovery.
    Schedule,
    /// Every account at once: SIGUSR1, `rotate --all`.
    Forced,
    /// `rotate ACCOUNT`, `ctl rotate ACCOUNT`, `POST /v1/accounts/A/rotate`.
    Explicit,
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
    #[error("account {0} is busy: another credrotd saga holds its lease")]
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
    /// A break-glass revoke suspended the account; only `rotate ACCOUNT` lifts it.
    #[error("account {0} is suspended by a break-glass revoke; `credrotd rotate {0}` issues a new credential")]
    Suspended(String),
    /// Another ledger owns the account's scoped role.
    #[error("account {account} is owned by another credrotd ledger ({owner}); refusing to manage it (run with --take-over to take it over{})", until.map(|t| format!(", or wait until {} when the owner counts as gone", t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))).unwrap_or_default())]
    NotOwner {
        account: String,
        owner: String,
        until: Option<DateTime<Utc>>,
    },
    /// A credential is still in a middle state that could not be finished.
    #[error("account {account}: credential v{version} is half published ({detail}); it is finished before a new one is issued")]
    Unfinished {
        account: String,
        version: i64,
        detail: String,
    },
    /// The saga task panicked. The account is freed and the failure recorded.
    #[error("account {account}: internal error: {message}")]
    Panicked { account: String, message: String },
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
    /// Login roles the ledger did not know: dropped when they could not log in,
    /// otherwise recorded as retiring (a store or a consumer may still use them).
    pub orphans_dropped: Vec<String>,
    pub adopted: Vec<String>,
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

    /// The engine of the database a credential was issued in, which a reload
    /// may have moved the account away from.
    fn engine_of(&self, cred: &Credential) -> Result<&Arc<dyn Engine>, RotationError> {
        self.engines.get(&cred.database).ok_or_else(|| {
            RotationError::Unavailable(format!(
                "account {}: credential v{} lives in database {}, which the inventory no longer lists",
                cred.account, cred.version, cred.database
            ))
        })
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

    /// Runs `f` holding the account's lease, waiting up to `wait` for it. The
    /// lease is renewed while `f` runs and released on every path, a panic in
    /// `f` included (which becomes [`RotationError::Panicked`]).
    pub async fn with_lease<T, F, Fut>(
        &self,
        account: &str,
        wait: Duration,
        f: F,
    ) -> Result<T, RotationError>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: std::future::Future<Output = Result<T, RotationError>>,
    {
        let holder = self.ledger.new_holder();
        let deadline = tokio::time::Instant::now() + wait;
        let lease = loop {
            if let Some(lease) = self
                .ledger
                .acquire(account, &holder, LEASE_TTL, self.clock.now())
                .await?
            {
                break lease;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RotationError::Busy(account.to_owned()));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        // Keep the lease while the saga runs, however long its steps take. A
        // renewal that comes back with another token means someone took it over:
        // our writes are refused by the fence from then on.
        let renew = async {
            loop {
                tokio::time::sleep(LEASE_TTL / 3).await;
                match self
                    .ledger
                    .acquire(account, &holder, LEASE_TTL, self.clock.now())
                    .await
                {
                    Ok(Some(l)) if l.token == lease.token => {}
                    Ok(_) => warn!(account, "lost the account's lease while working on it"),
                    Err(e) => warn!(account, error = %e, "cannot renew the account's lease"),
                }
            }
        };
        let work = AssertUnwindSafe(f(lease.clone())).catch_unwind();
        let out = tokio::select! {
            out = work => out.unwrap_or_else(|panic| {
                let message = panic_message(&panic);
                error!(account, error = %message, "saga panicked; the account is freed and the failure recorded");
                Err(RotationError::Panicked { account: account.to_owned(), message })
            }),
            never = renew => never,
        };
        if let Err(e) = self.ledger.release(&lease).await {
            warn!(account, error = %e, "cannot release lease; it expires on its own");
        }
        out
    }
}

/// The text of a panic payload.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// What puts a static role's previous password back.
enum Restore {
    Verifier(SavedPassword),
    Password {
        password: Secret,
        valid_until: DateTime<Utc>,
    },
}

/// One saga: an account, the context and the lease it holds.
struct Saga<'a> {
    ctx: &'a Context,
    account: &'a Account,
    lease: &'a Lease,
}

/// Rotates one account now, taking its lease (waiting up to 30 s), as an
/// operator's explicit request: it lifts a break-glass suspension.
pub async fn rotate(ctx: &Context, account: &Account) -> Result<Rotated, RotationError> {
    ctx.with_lease(&account.name, Duration::from_secs(30), |lease| async move {
        rotate_leased(ctx, &lease, account, Trigger::Explicit).await
    })
    .await
}

/// Rotates one account: finishes what an earlier saga left, issues, verifies,
/// publishes and promotes a new credential. The caller holds `lease`.
pub async fn rotate_leased(
    ctx: &Context,
    lease: &Lease,
    account: &Account,
    trigger: Trigger,
) -> Result<Rotated, RotationError> {
    let span =
        tracing::info_span!("rotation", account = %account.name, version = tracing::field::Empty);
    let saga = Saga {
        ctx,
        account,
        lease,
    };
    saga.rotate(trigger).instrument(span).await
}

impl Saga<'_> {
    fn name(&self) -> &str {
        &self.account.name
    }

    fn now(&self) -> DateTime<Utc> {
        self.ctx.clock.now()
    }

    fn engine(&self) -> &Arc<dyn Engine> {
        self.ctx.engine(self.account)
    }

    fn is_static(&self) -> bool {
        matches!(self.account.strategy, Strategy::Static { .. })
    }

    async fn rotate(&self, trigger: Trigger) -> Result<Rotated, RotationError> {
        let state = self.ctx.ledger.account(self.name()).await?;
        if state.suspended {
            if trigger != Trigger::Explicit {
                return Err(RotationError::Suspended(self.name().to_owned()));
            }
            // The operator's intent is recorded before anything is issued.
            self.ctx.ledger.set_suspended(self.name(), false).await?;
            self.ctx
                .event(
                    self.name(),
                    None,
                    "unsuspended",
                    "explicit rotate after a break-glass revoke",
                )
                .await;
        }
        self.ensure_owner(state.foreign_owner.is_some()).await?;
        self.extend_current_if_due("a rotation is starting").await;
        self.reconcile().await?;
        self.claim().await;

        // Finish whatever an earlier saga left, through the same steps.
        let mut report = self.resume().await?;
        if !report.promoted.is_empty() {
            // Finishing an earlier publication is this rotation: its predecessor
            // now gets a full overlap and the consumers their notification.
            self.drain_outbox().await;
            let cur = self
                .ctx
                .ledger
                .live(self.name())
                .await?
                .into_iter()
                .rev()
                .find(|c| c.state == CredState::Current)
                .ok_or_else(|| RotationError::Unfinished {
                    account: self.name().to_owned(),
                    version: 0,
                    detail: "no current credential after promotion".into(),
                })?;
            return Ok(Rotated {
                account: self.name().to_owned(),
                version: cur.version,
                username: cur.username,
                expires_at: cur.expires_at,
                previous: None,
            });
        }
        self.rebuild().await?;
        self.sweep(&mut report).await;
        if let Some(unfinished) = self
            .ctx
            .ledger
            .live(self.name())
            .await?
            .into_iter()
            .find(|c| c.state.is_middle())
        {
            return Err(RotationError::Unfinished {
                account: self.name().to_owned(),
                version: unfinished.version,
                detail: format!("stores holding it: {}", unfinished.stores.join(", ")),
            });
        }
        // At most two credentials may be valid: a predecessor still in its
        // overlap is retired now. Its successor is current, so this never
        // strands a consumer that follows the store. A failure is a stuck item,
        // not a reason to keep the account on an expiring credential. Logins
        // the sweep just found keep their overlap (someone may use them).
        for old in self.ctx.ledger.live(self.name()).await? {
            if old.state == CredState::Retiring && !report.adopted.contains(&old.username) {
                info!(account = %self.name(), version = old.version, username = %old.username, "overlap cut short by a new rotation");
                self.retire_or_stick(&old).await;
            }
        }

        let rotated = self.issue().await?;
        self.drain_outbox().await;
        Ok(rotated)
    }

    /// Refuses to manage an account whose scoped role another ledger owns,
    /// unless told to take over or the owner missed its own rotation.
    async fn ensure_owner(&self, was_foreign: bool) -> Result<(), RotationError> {
        let owner = self.engine().owner(self.account).await?;
        let ours = self.ctx.ledger.id();
        // Say that this ledger's daemon runs (re-established after a database
        // restart), so that no other ledger mistakes it for gone.
        if let Err(e) = self.engine().hold_presence(ours).await {
            warn!(account = %self.name(), error = %e, "cannot hold the presence lock");
        }
        let other = match owner.as_ref().and_then(|o| o.ledger.as_deref()) {
            None => None,
            Some(id) if id == ours => None,
            Some(id) => Some(id.to_owned()),
        };
        let Some(other) = other else {
            if was_foreign {
                self.ctx.ledger.set_foreign_owner(self.name(), None).await?;
            }
            return Ok(());
        };
        let seen = owner.and_then(|o| o.seen);
        let stale_at = seen.and_then(|s| {
            self.account
                .schedule
                .next_after(s)
                .map(|fire| fire + to_chrono(self.account.expiry_margin / 2))
        });
        let stale = stale_at.is_none_or(|t| self.now() > t);
        let forced = self.ctx.take_over.load(std::sync::atomic::Ordering::SeqCst);
        // The owner's daemon holds its presence lock in this database while it
        // runs; without it (killed, stopped, its ledger lost with its pod) the
        // account is taken over at once rather than after a missed rotation.
        let gone = !forced && !stale && !self.engine().presence(&other).await?;
        if forced || stale || gone {
            let why = if forced {
                "--take-over"
            } else if stale {
                "the owner missed its rotation"
            } else {
                "the owner's daemon is not running"
            };
            warn!(account = %self.name(), previous_owner = %other, reason = why, "taking the account over from another ledger");
            self.ctx
                .event(
                    self.name(),
                    None,
                    "taken-over",
                    &format!("from ledger {other}: {why}"),
                )
                .await;
            self.ctx.ledger.set_foreign_owner(self.name(), None).await?;
            // Claimed at once: from now on the other ledger is the stranger.
            self.engine()
                .claim(self.account, self.ctx.ledger.id(), self.now())
                .await?;
            return Ok(());
        }
        let err = RotationError::NotOwner {
            account: self.name().to_owned(),
            owner: other,
            until: stale_at,
        };
        self.ctx
            .ledger
            .set_foreign_owner(self.name(), Some(&err.to_string()))
            .await?;
        Err(err)
    }

    /// Records this ledger as the scoped role's owner, with a fresh heartbeat.
    async fn claim(&self) {
        if let Err(e) = self
            .engine()
            .claim(self.account, self.ctx.ledger.id(), self.now())
            .await
        {
            warn!(account = %self.name(), error = %e, "cannot record this ledger as the scoped role's owner");
        }
    }

    /// Brings the scoped role to the declared state. Statements that fail are
    /// stuck items; only a scoped role that cannot exist stops issuance.
    async fn reconcile(&self) -> Result<(), RotationError> {
        let r = self.engine().reconcile(self.account, true).await?;
        if !r.changes.is_empty() {
            info!(account = %self.name(), changes = r.changes.len(), "reconciled scoped role");
            let detail: Vec<String> = r.changes.iter().map(|c| c.0.clone()).collect();
            self.ctx
                .event(self.name(), None, "reconciled", &detail.join("; "))
                .await;
        }
        let now = self.now();
        let known = self.ctx.ledger.stuck_items(Some(self.name())).await?;
        for old in known.iter().filter(|i| i.kind == "reconcile") {
            if !r.stuck.iter().any(|s| s.what == old.subject) {
                self.ctx
                    .ledger
                    .unstuck(self.name(), "reconcile", &old.subject)
                    .await?;
            }
        }
        for s in &r.stuck {
            warn!(account = %self.name(), what = %s.what, error = %s.error, "reconciliation step stuck; issuing anyway");
            self.stick("reconcile", &s.what, &s.error, now).await;
        }
        Ok(())
    }

    /// Records a stuck item with backoff.
    async fn stick(&self, kind: &str, subject: &str, error: &str, now: DateTime<Utc>) {
        let attempts = self
            .ctx
            .ledger
            .stuck_items(Some(self.name()))
            .await
            .ok()
            .and_then(|items| {
                items
                    .into_iter()
                    .find(|i| i.kind == kind && i.subject == subject)
            })
            .map(|i| i.attempts + 1)
            .unwrap_or(1);
        let cfg = &self.ctx.inventory.rotation;
        let attempt = attempts.clamp(1, 30) as u32;
        let retry_at = now + to_chrono(backoff(attempt, cfg.retry_initial, cfg.retry_max));
        if let Err(e) = self
            .ctx
            .ledger
            .stuck(self.name(), kind, subject, error, now, retry_at)
            .await
        {
            warn!(account = %self.name(), error = %e, "cannot record a stuck item");
        }
    }

    async fn unstick(&self, kind: &str, subject: &str) {
        if let Err(e) = self.ctx.ledger.unstuck(self.name(), kind, subject).await {
            warn!(account = %self.name(), error = %e, "cannot clear a stuck item");
        }
    }

    /// Issues, verifies, publishes and promotes a new credential.
    async fn issue(&self) -> Result<Rotated, RotationError> {
        let (ctx, account) = (self.ctx, self.account);
        let engine = self.engine();
        let current = self
            .ctx
            .ledger
            .live(self.name())
            .await?
            .into_iter()
            .rev()
            .find(|c| c.state == CredState::Current);
        let now = self.now();
        let username = self.choose_username(current.as_ref(), now).await?;
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
                self.lease,
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

        // A static role's password is replaced in place: keep a way to put back
        // what the stores serve if verification or publishing fails.
        let saved = match &account.strategy {
            Strategy::Static { .. } => match self.static_restore(current.as_ref()).await {
                Ok(saved) => saved,
                Err(e) => {
                    self.mark_aborted(&cred, CredState::Planned, &e.to_string())
                        .await;
                    return Err(e);
                }
            },
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
            self.mark_aborted(&cred, CredState::Planned, &e.to_string())
                .await;
            return Err(e.into());
        }
        self.step(&cred, CredState::Planned, CredState::Created)
            .await?;

        if let Err(e) = engine.verify(&username, &password).await {
            self.abort(&cred, CredState::Created, saved.as_ref(), &e.to_string())
                .await;
            return Err(e.into());
        }
        self.step(&cred, CredState::Created, CredState::Verified)
            .await?;

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
        if let Err((e, still_held)) = self.publish_all(&cred, &publication, &[]).await {
            // Stores that could not be reverted still serve the new credential:
            // it stays `verified` for `resume` to finish, and its login lives.
            if still_held.is_empty() {
                self.abort(&cred, CredState::Verified, saved.as_ref(), &e.to_string())
                    .await;
            } else {
                warn!(account = %account.name, version = cred.version, stores = ?still_held, "left for recovery: a store could not be reverted");
            }
            return Err(e.into());
        }
        ctx.ledger
            .advance_noting(
                &cred,
                CredState::Verified,
                CredState::Published,
                self.now(),
                "published",
                &format!("stores={}", account.stores.join(",")),
                self.lease,
            )
            .await?;
        ctx.crash_point(CredState::Published)?;
        let previous = self.promote(&cred, current.as_ref()).await?;
        info!(username = %username, expires_at = %expires_at, "credential is current");
        ctx.crash_point(CredState::Current)?;
        Ok(Rotated {
            account: account.name.clone(),
            version: cred.version,
            username,
            expires_at,
            previous,
        })
    }

    /// Publishes to every store of the account that is not in `already` (two-phase
    /// stores first), recording after each which stores hold it, then promotes
    /// in every store. If a store refuses, the stores this call published to are
    /// reverted, newest first, and the error comes with the stores that still
    /// hold the credential (also recorded in the ledger).
    async fn publish_all(
        &self,
        cred: &Credential,
        publication: &Publication<'_>,
        already: &[String],
    ) -> Result<(), (StoreError, Vec<String>)> {
        let mut stores = self.ctx.stores_of(self.account);
        stores.sort_by_key(|s| !s.two_phase());
        let mut published: Vec<(Arc<dyn Store>, crate::store::Undo)> = Vec::new();
        let mut names: Vec<String> = already.to_vec();
        let mut failure: Option<StoreError> = None;
        for store in stores
            .iter()
            .filter(|s| !already.iter().any(|a| a == s.name()))
        {
            match store.publish(publication).await {
                Ok(undo) => {
                    published.push((store.clone(), undo));
                    names.push(store.name().to_owned());
                    if let Err(e) = self
                        .ctx
                        .ledger
                        .set_stores(cred, &names, self.now(), self.lease)
                        .await
                    {
                        warn!(account = %self.name(), error = %e, "cannot record which stores hold the credential");
                    }
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
                    .promote(&self.account.name, &self.account.path, cred.version)
                    .await
                {
                    failure = Some(e);
                    break;
                }
            }
        }
        let Some(e) = failure else { return Ok(()) };
        // Put back what this call published, newest first, so that no store is
        // left pointing at a login that is about to be dropped.
        let mut still_held: Vec<String> = already.to_vec();
        for (s, undo) in published.into_iter().rev() {
            if let Err(re) = s.revert(undo).await {
                warn!(store = s.name(), error = %re, "cannot revert store after a failed publish");
                still_held.push(s.name().to_owned());
            }
        }
        if let Err(le) = self
            .ctx
            .ledger
            .set_stores(cred, &still_held, self.now(), self.lease)
            .await
        {
            warn!(account = %self.name(), error = %le, "cannot record the reverted stores");
        }
        Err((e, still_held))
    }

    /// Makes a published credential current: one ledger transaction records the
    /// promotion, the predecessor's retirement time, the successful rotation and
    /// the consumer notification to send. Then a zero overlap (or a static role)
    /// retires the predecessor at once, and a late promotion extends the
    /// predecessor to the end of its overlap.
    async fn promote(
        &self,
        cred: &Credential,
        current: Option<&Credential>,
    ) -> Result<Option<(String, DateTime<Utc>)>, RotationError> {
        let promoted_at = self.now();
        let retire_at = promoted_at + to_chrono(self.account.overlap);
        self.ctx
            .ledger
            .promote(
                cred,
                current,
                retire_at,
                self.account.schedule.next_after(promoted_at),
                promoted_at,
                Some(&format!(
                    "username={} expires_at={}",
                    cred.username,
                    cred.expires_at.to_rfc3339()
                )),
                self.lease,
            )
            .await?;
        let Some(prev) = current else {
            return Ok(None);
        };
        let prev = self.ctx.ledger.get(prev.id).await?;
        // A static role's old password is gone the moment the new one is set;
        // a zero overlap retires at once.
        if self.is_static() || self.account.overlap.is_zero() {
            self.retire_or_stick(&prev).await;
            return Ok(None);
        }
        // A promotion that came late (after failed attempts) must not let the
        // predecessor's own expiry cut the overlap short; and a predecessor the
        // expiry guard extended beyond the overlap (plus the usual margin) dies
        // at the overlap's end again. Best effort: the new credential is
        // already current, and retirement refuses it at `retire_at` anyway.
        let late = prev.expires_at < retire_at;
        let stretched = prev.expires_at > retire_at + to_chrono(self.account.expiry_margin);
        if (late || stretched) && prev.strategy != "adopted" {
            match self.ctx.engine_of(&prev) {
                Ok(engine) => match engine.extend_login(&prev.username, retire_at).await {
                    Ok(()) => {
                        if let Err(e) = self
                            .ctx
                            .ledger
                            .set_expires_at(&prev, retire_at, self.now(), self.lease)
                            .await
                        {
                            warn!(account = %self.name(), error = %e, "cannot record the extended expiry");
                        }
                        info!(previous = %prev.username, until = %retire_at, "set the previous credential's expiry to the end of its overlap");
                    }
                    Err(e) => {
                        warn!(account = %self.name(), previous = %prev.username, error = %e, "cannot extend the previous credential to the end of its overlap")
                    }
                },
                Err(e) => {
                    warn!(account = %self.name(), error = %e, "cannot extend the previous credential")
                }
            }
        }
        info!(previous = %prev.username, until = %retire_at, "previous credential stays valid during the overlap");
        Ok(Some((prev.username.clone(), retire_at)))
    }

    async fn step(
        &self,
        cred: &Credential,
        from: CredState,
        to: CredState,
    ) -> Result<(), RotationError> {
        self.ctx
            .ledger
            .advance(cred, from, to, self.now(), self.lease)
            .await?;
        self.ctx.crash_point(to)
    }

    /// Rolls a failed new credential back and records why. Best effort: whatever
    /// fails here is finished by the next resume or housekeeping pass.
    async fn abort(
        &self,
        cred: &Credential,
        state: CredState,
        saved: Option<&Restore>,
        reason: &str,
    ) {
        warn!(account = %self.name(), version = cred.version, error = %reason, "rotation failed; rolling back");
        if let Err(e) = self.rollback_login(cred, saved).await {
            warn!(account = %self.name(), version = cred.version, error = %e, "rollback incomplete; recovery will finish it");
            return;
        }
        self.mark_aborted(cred, state, reason).await;
    }

    async fn mark_aborted(&self, cred: &Credential, state: CredState, reason: &str) {
        if let Err(e) = self
            .ctx
            .ledger
            .advance_noting(
                cred,
                state,
                CredState::Aborted,
                self.now(),
                "aborted",
                reason,
                self.lease,
            )
            .await
        {
            warn!(account = %self.name(), error = %e, "cannot record the rollback");
        }
    }

    /// Undoes the database side of a credential that never became current: the
    /// login is refused (that must work), then dropped (a stuck item if not).
    async fn rollback_login(
        &self,
        cred: &Credential,
        saved: Option<&Restore>,
    ) -> Result<(), RotationError> {
        let engine = self.ctx.engine_of(cred)?;
        match &self.account.strategy {
            Strategy::Ephemeral => {
                engine.disable_login(&cred.username).await?;
                self.drop_or_stick(engine.as_ref(), &cred.username).await;
            }
            Strategy::Alternating => {
                // Never disable the role a live current credential uses.
                let live = self.ctx.ledger.live(self.name()).await?;
                if !live
                    .iter()
                    .any(|c| c.id != cred.id && c.username == cred.username && !c.state.is_middle())
                {
                    engine.disable_login(&cred.username).await?;
                }
            }
            // Put back what the stores serve: the old verifier if the admin could
            // read it, else the password a store holds (read before the change).
            Strategy::Static { .. } => match saved {
                Some(Restore::Verifier(saved)) => {
                    engine.restore_password(&cred.username, saved).await?;
                    info!(account = %self.name(), username = %cred.username, "restored the static role's previous password");
                }
                Some(Restore::Password {
                    password,
                    valid_until,
                }) => {
                    let login = Login {
                        username: &cred.username,
                        password,
                        valid_until: *valid_until,
                    };
                    engine.set_password(self.account, &login).await?;
                    info!(account = %self.name(), username = %cred.username, "set the static role's password back to the one the stores serve");
                }
                None => {}
            },
        }
        Ok(())
    }

    /// How to undo a static password change: the old verifier (superusers may
    /// read it), or else the password the stores serve, read back from one of
    /// them. With neither, the change is refused while any store fails its
    /// check, since a failed publish could not be undone and every store would
    /// serve a password that no longer works.
    async fn static_restore(
        &self,
        current: Option<&Credential>,
    ) -> Result<Option<Restore>, RotationError> {
        let Strategy::Static { role, .. } = &self.account.strategy else {
            return Ok(None);
        };
        match self.engine().saved_password(role).await {
            Ok(Some(saved)) => return Ok(Some(Restore::Verifier(saved))),
            Ok(None) => {}
            Err(e) => {
                warn!(account = %self.name(), error = %e, "cannot save the static role's password verifier")
            }
        }
        let Some(current) = current else {
            return Ok(None);
        };
        for store in self.ctx.stores_of(self.account) {
            if let Ok(Some(held)) = store.fetch(self.name(), &self.account.path, None).await {
                if held.username == *role && held.version == current.version {
                    return Ok(Some(Restore::Password {
                        password: held.password,
                        valid_until: current.expires_at,
                    }));
                }
            }
        }
        for store in self.ctx.stores_of(self.account) {
            store.check().await?;
        }
        Ok(None)
    }

    /// Drops an ephemeral login that can no longer log in; a failure (objects in
    /// another database, missing privileges) is a stuck item retried later.
    async fn drop_or_stick(&self, engine: &dyn Engine, username: &str) {
        match engine.drop_login(self.account, username).await {
            Ok(()) => self.unstick("drop-login", username).await,
            Err(e) => {
                warn!(account = %self.name(), username, error = %e, "login refuses logins but cannot be dropped; retrying later");
                self.stick("drop-login", username, &e.to_string(), self.now())
                    .await;
            }
        }
    }

    async fn choose_username(
        &self,
        current: Option<&Credential>,
        now: DateTime<Utc>,
    ) -> Result<String, RotationError> {
        let account = self.account;
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
                let used: Vec<String> = self
                    .ctx
                    .ledger
                    .credentials(&account.name)
                    .await?
                    .into_iter()
                    .map(|c| c.username)
                    .collect();
                // One name per second; a second rotation within the same second
                // takes the next free second.
                for offset in 0..120 {
                    let t = now + chrono::Duration::seconds(offset);
                    let name = format!("{}_{}", account.name, t.format("%Y%m%d%H%M%S"));
                    if !used.contains(&name) && self.engine().login_info(&name).await?.is_none() {
                        return Ok(name);
                    }
                }
                Err(RotationError::NameExhausted {
                    account: account.name.clone(),
                })
            }
        }
    }

    /// Retires a credential and turns a failure into a stuck item: retirement is
    /// housekeeping and never blocks the next issue.
    async fn retire_or_stick(&self, cred: &Credential) -> bool {
        match self.retire(cred, false).await {
            Ok(done) => done,
            Err(e) => {
                warn!(account = %self.name(), username = %cred.username, error = %e, "cannot retire the previous credential; retrying later");
                self.stick("retire", &cred.username, &e.to_string(), self.now())
                    .await;
                false
            }
        }
    }

    /// Retires a credential: refuses new logins and expires it, ends its sessions
    /// after the grace, and drops the login role (ephemeral). Unless `forced`
    /// (break-glass), refuses to retire a credential that has no current
    /// successor (invariant 2) or that a store still serves. Returns whether it
    /// is now revoked.
    async fn retire(&self, cred: &Credential, forced: bool) -> Result<bool, RotationError> {
        let cred = self.ctx.ledger.get(cred.id).await?;
        if !cred.state.is_live() {
            return Ok(true);
        }
        if !forced {
            let live = self.ctx.ledger.live(self.name()).await?;
            // A login adopted from the catalog (unknown to a lost ledger) got a
            // version when it was found; any current credential succeeds it.
            let adopted = cred.strategy.starts_with("unknown");
            let has_successor = live
                .iter()
                .any(|c| c.state == CredState::Current && (c.version > cred.version || adopted));
            if !has_successor {
                return Err(RotationError::NotRetiring {
                    account: self.name().to_owned(),
                    version: cred.version,
                    state: cred.state,
                });
            }
            if let Some(store) = self.served_by(&cred).await {
                let why = format!("store {store} still serves v{}", cred.version);
                warn!(account = %self.name(), username = %cred.username, reason = %why, "not retiring a credential a store still serves");
                self.stick("store-serves", &cred.username, &why, self.now())
                    .await;
                if let Err(e) = self.keep_alive(&cred).await {
                    warn!(account = %self.name(), username = %cred.username, error = %e, "cannot extend a credential a store still serves");
                }
                return Ok(false);
            }
            self.unstick("store-serves", &cred.username).await;
        }
        let revoked = self.revoke_login(&cred).await;
        crate::telemetry::revocation(self.name(), revoked.is_ok());
        revoked?;
        self.unstick("retire", &cred.username).await;
        self.ctx
            .ledger
            .advance_noting(
                &cred,
                cred.state,
                CredState::Revoked,
                self.now(),
                "revoked",
                &format!("username={}", cred.username),
                self.lease,
            )
            .await?;
        info!(account = %self.name(), version = cred.version, username = %cred.username, "credential revoked");
        Ok(true)
    }

    /// Whether any store hands out `username` right now. A store that cannot be
    /// asked counts as serving it.
    async fn serves_login(&self, username: &str) -> bool {
        for store in self.ctx.stores_of(self.account) {
            match store.fetch(self.name(), &self.account.path, None).await {
                Ok(Some(held)) if held.username == username => return true,
                Ok(_) => {}
                Err(e) => {
                    warn!(account = %self.name(), store = store.name(), error = %e, "cannot ask the store what it serves");
                    return true;
                }
            }
        }
        false
    }

    /// The first store that serves `cred` to its readers right now, if any. A
    /// store that cannot be asked counts as serving it: retiring is never a
    /// guess.
    async fn served_by(&self, cred: &Credential) -> Option<String> {
        if self.is_static() {
            // The old password of a static role is gone already.
            return None;
        }
        for store in self.ctx.stores_of(self.account) {
            match store.fetch(self.name(), &self.account.path, None).await {
                Ok(Some(held)) => {
                    let same = held.username == cred.username
                        && (held.version == cred.version || cred.strategy.starts_with("unknown"));
                    if same {
                        return Some(store.name().to_owned());
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(account = %self.name(), store = store.name(), error = %e, "cannot ask the store what it serves");
                    return Some(store.name().to_owned());
                }
            }
        }
        None
    }

    async fn revoke_login(&self, cred: &Credential) -> Result<(), RotationError> {
        let engine = self.ctx.engine_of(cred)?;
        // A static role keeps its name across versions: only its newest
        // credential may touch the role, and only in a break-glass revoke.
        if cred.strategy == "static" && cred.state != CredState::Current {
            return Ok(());
        }
        if cred.strategy == "adopted" && cred.state != CredState::Current {
            return Ok(());
        }
        // A fixed name (alternating) may already carry a newer credential's
        // password: then this one is gone with it, and refusing the role would
        // lock out the newer one.
        let shared = self
            .ctx
            .ledger
            .live(self.name())
            .await?
            .into_iter()
            .any(|c| {
                c.id != cred.id
                    && c.username == cred.username
                    && c.version > cred.version
                    && matches!(
                        c.state,
                        CredState::Current
                            | CredState::Created
                            | CredState::Verified
                            | CredState::Published
                    )
            });
        if shared {
            // A static role's newer password is current; where the server kept
            // this one beside it for the overlap (MySQL 8), it ends now.
            if self.is_static() {
                engine.discard_old_password(&cred.username).await?;
            }
            return Ok(());
        }
        // Refusing new logins (and expiring) is what revokes the credential; it
        // must succeed.
        engine.disable_login(&cred.username).await?;
        // Ending sessions and dropping the role are clean-up: if they fail (an
        // object the login owns in another database, no right to terminate
        // backends), the credential is still revoked and the drop is a stuck
        // item. They never block the account's next rotation.
        let account = self.account;
        if account.revoke.terminate_sessions {
            if !account.revoke.grace.is_zero() {
                let until = self.now() + to_chrono(account.revoke.grace);
                self.ctx.clock.sleep_until(until).await;
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
        if matches!(cred.strategy.as_str(), "ephemeral" | "unknown") {
            self.drop_or_stick(engine.as_ref(), &cred.username).await;
        }
        Ok(())
    }

    /// Drives every credential left in a middle state to a resting state:
    /// `planned`/`created` roll back (the password died with the process);
    /// `verified`/`published` are finished when some store holds them
    /// (publishing to the stores that lack them with the credential read back
    /// from a store that has it, then promoting) or rolled back when none does.
    async fn resume(&self) -> Result<Recovered, RotationError> {
        let mut report = Recovered::default();
        for cred in self.ctx.ledger.live(self.name()).await? {
            match cred.state {
                CredState::Planned | CredState::Created => {
                    self.rollback_login(&cred, None).await?;
                    self.ctx
                        .ledger
                        .advance_noting(
                            &cred,
                            cred.state,
                            CredState::Aborted,
                            self.now(),
                            "rolled-back",
                            &format!("recovered from state {}", cred.state),
                            self.lease,
                        )
                        .await?;
                    report.rolled_back.push(cred.username.clone());
                    if self.is_static() {
                        // The role's password may already be the lost one.
                        report.rotate_now = true;
                    }
                }
                CredState::Verified | CredState::Published => {
                    self.finish_publication(&cred, &mut report).await?;
                }
                _ => {}
            }
        }
        Ok(report)
    }

    async fn finish_publication(
        &self,
        cred: &Credential,
        report: &mut Recovered,
    ) -> Result<(), RotationError> {
        let stores = self.ctx.stores_of(self.account);
        let (account, path) = (self.name(), self.account.path.as_str());
        // Which stores hold it, asked of the stores themselves (the ledger's
        // list may predate a revert): a single-phase store holds it when its
        // readers get it; a two-phase store also when it is staged (AWSPENDING).
        // A store that cannot be asked stops the saga; it is retried.
        let mut holders: Vec<String> = Vec::new();
        let mut held = None;
        for s in &stores {
            let asked = if s.two_phase() {
                Some(cred.version)
            } else {
                None
            };
            let fetched = s
                .fetch(account, path, asked)
                .await?
                .filter(|h| h.version == cred.version && h.username == cred.username);
            if fetched.is_some() {
                holders.push(s.name().to_owned());
                if held.is_none() {
                    held = fetched;
                }
            }
        }
        if holders.is_empty() {
            // No store has seen it; drop any stage a crash left behind.
            for s in &stores {
                s.discard(account, path, cred.version).await?;
            }
            self.rollback_login(cred, None).await?;
            self.ctx
                .ledger
                .advance_noting(
                    cred,
                    cred.state,
                    CredState::Aborted,
                    self.now(),
                    "rolled-back",
                    "no store holds it",
                    self.lease,
                )
                .await?;
            report.rolled_back.push(cred.username.clone());
            if self.is_static() {
                report.rotate_now = true;
            }
            return Ok(());
        }
        if holders.len() < stores.len() {
            // Current means every store: publish to the others the credential a
            // holder has, once it is known to log in.
            let Some(held) = held else {
                return Err(RotationError::Unfinished {
                    account: account.to_owned(),
                    version: cred.version,
                    detail: format!("{} hold it but none can give it back", holders.join(", ")),
                });
            };
            let engine = self.ctx.engine_of(cred)?;
            engine.verify(&cred.username, &held.password).await?;
            let endpoint = engine.endpoint();
            let publication = Publication {
                account,
                path,
                version: cred.version,
                username: &cred.username,
                password: &held.password,
                endpoint: &endpoint,
                issued_at: cred.issued_at,
                expires_at: cred.expires_at,
            };
            self.publish_all(cred, &publication, &holders)
                .await
                .map_err(|(e, _)| e)?;
        } else {
            for s in &stores {
                s.promote(account, path, cred.version).await?;
            }
        }
        if cred.state == CredState::Verified {
            self.ctx
                .ledger
                .advance(
                    cred,
                    CredState::Verified,
                    CredState::Published,
                    self.now(),
                    self.lease,
                )
                .await?;
        }
        let cred = self.ctx.ledger.get(cred.id).await?;
        let prev = self
            .ctx
            .ledger
            .live(account)
            .await?
            .into_iter()
            .rev()
            .find(|c| c.state == CredState::Current);
        self.promote(&cred, prev.as_ref()).await?;
        self.ctx
            .event(
                account,
                Some(cred.version),
                "recovered",
                &format!("finished publishing to {} stores", stores.len()),
            )
            .await;
        report.promoted.push(cred.username.clone());
        Ok(())
    }

    /// A lost ledger: when the ledger knows no live credential of the account
    /// but every store holds the same one and it logs in, record it as current
    /// instead of issuing over it.
    async fn rebuild(&self) -> Result<Option<String>, RotationError> {
        let live = self.ctx.ledger.live(self.name()).await?;
        if !live.is_empty() {
            return Ok(None);
        }
        let stores = self.ctx.stores_of(self.account);
        let mut found: Option<crate::store::Held> = None;
        for s in &stores {
            let Some(h) = s.fetch(self.name(), &self.account.path, None).await? else {
                return Ok(None);
            };
            match &found {
                Some(f) if f.username != h.username || f.version != h.version => {
                    return Ok(None);
                }
                Some(_) => {}
                None => found = Some(h),
            }
        }
        let Some(held) = found else { return Ok(None) };
        let engine = self.engine();
        let Some(info) = engine.login_info(&held.username).await? else {
            return Ok(None);
        };
        if engine.verify(&held.username, &held.password).await.is_err() {
            return Ok(None);
        }
        let now = self.now();
        let strategy = self.account.strategy.as_str();
        let cred = self
            .ctx
            .ledger
            .adopt(
                NewCredential {
                    account: self.name(),
                    database: &self.account.database,
                    strategy,
                    username: &held.username,
                    issued_at: held.issued_at.unwrap_or(now),
                    expires_at: info
                        .valid_until
                        .or(held.expires_at)
                        .unwrap_or(now + to_chrono(self.account.max_lifetime)),
                },
                CredState::Current,
                Some(held.version),
                None,
                now,
                self.lease,
            )
            .await?;
        warn!(account = %self.name(), version = cred.version, username = %cred.username, "rebuilt the ledger from the stores: the credential they hold is current");
        self.ctx
            .event(
                self.name(),
                Some(cred.version),
                "rebuilt",
                &format!(
                    "username={} from {} stores and the catalog",
                    cred.username,
                    stores.len()
                ),
            )
            .await;
        Ok(Some(cred.username))
    }

    /// Login roles of the account that the ledger does not know (a lost ledger,
    /// a rollback whose drop failed): those that can still log in are recorded
    /// as retiring (a consumer may be using them; they go after one overlap),
    /// the others are dropped. A failure is a stuck item.
    async fn sweep(&self, report: &mut Recovered) {
        if let Err(e) = self.sweep_inner(report).await {
            warn!(account = %self.name(), error = %e, "cannot look for unknown login roles; retrying later");
            self.stick("sweep", "login roles", &e.to_string(), self.now())
                .await;
        } else {
            self.unstick("sweep", "login roles").await;
        }
    }

    async fn sweep_inner(&self, report: &mut Recovered) -> Result<(), RotationError> {
        let engine = self.engine();
        let live = self.ctx.ledger.live(self.name()).await?;
        let now = self.now();
        let mut names = engine.managed_logins(self.account).await?;
        if matches!(self.account.strategy, Strategy::Alternating) {
            names.push(format!("{}_a", self.name()));
            names.push(format!("{}_b", self.name()));
        }
        for name in names {
            if live.iter().any(|c| c.username == name) {
                continue;
            }
            let Some(info) = engine.login_info(&name).await? else {
                continue;
            };
            let usable = info.can_login && info.valid_until.is_none_or(|v| v > now);
            let fixed = matches!(self.account.strategy, Strategy::Alternating);
            if usable && !self.serves_login(&name).await {
                // Nobody's store hands it out: whatever overlap it had under the
                // ledger that issued it is over. Refused now, dropped if it can be.
                match engine.disable_login(&name).await {
                    Ok(()) => self.unstick("disable-login", &name).await,
                    Err(e) => {
                        self.stick("disable-login", &name, &e.to_string(), now)
                            .await;
                        continue;
                    }
                }
                if !fixed {
                    self.drop_or_stick(engine.as_ref(), &name).await;
                }
                warn!(account = %self.name(), username = %name, "refused a login the ledger did not know and no store serves");
                self.ctx
                    .event(
                        self.name(),
                        None,
                        "orphan-refused",
                        &format!("username={name}"),
                    )
                    .await;
                report.orphans_dropped.push(name);
            } else if usable {
                // A store serves it (the stores disagreed, so the rebuild could
                // not make it current): it keeps one overlap.
                let strategy = if fixed { "unknown-fixed" } else { "unknown" };
                let cred = self
                    .ctx
                    .ledger
                    .adopt(
                        NewCredential {
                            account: self.name(),
                            database: &self.account.database,
                            strategy,
                            username: &name,
                            issued_at: now,
                            expires_at: info
                                .valid_until
                                .unwrap_or(now + to_chrono(self.account.overlap)),
                        },
                        CredState::Retiring,
                        None,
                        Some(now + to_chrono(self.account.overlap)),
                        now,
                        self.lease,
                    )
                    .await?;
                warn!(account = %self.name(), username = %name, version = cred.version, "a login the ledger did not know is served by a store: it retires after one overlap");
                self.ctx
                    .event(
                        self.name(),
                        Some(cred.version),
                        "adopted-unknown",
                        &format!("username={name}; retires after the overlap"),
                    )
                    .await;
                report.adopted.push(name);
            } else if !fixed {
                self.drop_or_stick(engine.as_ref(), &name).await;
                self.ctx
                    .event(
                        self.name(),
                        None,
                        "orphan-dropped",
                        &format!("username={name}"),
                    )
                    .await;
                report.orphans_dropped.push(name);
            }
        }
        Ok(())
    }

    /// Sends what the outbox holds for the account (consumer notifications
    /// queued by a promotion), at least once.
    async fn drain_outbox(&self) {
        let items = match self.ctx.ledger.outbox_due(self.name(), self.now()).await {
            Ok(items) => items,
            Err(e) => {
                warn!(account = %self.name(), error = %e, "cannot read the outbox");
                return;
            }
        };
        for item in items {
            let outcome =
                crate::notify::consumers(&self.ctx.inventory, self.account, item.version).await;
            let done = match outcome {
                Ok(()) => self.ctx.ledger.outbox_done(item.id).await,
                Err(e) => {
                    let cfg = &self.ctx.inventory.rotation;
                    let attempt = (item.attempts + 1).clamp(1, 30) as u32;
                    let retry_at =
                        self.now() + to_chrono(backoff(attempt, cfg.retry_initial, cfg.retry_max));
                    self.ctx.ledger.outbox_retry(item.id, retry_at, &e).await
                }
            };
            if let Err(e) = done {
                warn!(account = %self.name(), error = %e, "cannot update the outbox");
            }
        }
    }
}

/// Housekeeping for one account, outside issuance: the outbox, stuck items
/// (drops, reconciliation, stores that served a predecessor), unknown logins,
/// and retiring credentials whose overlap ended. The caller holds the lease.
pub async fn housekeep(
    ctx: &Context,
    lease: &Lease,
    account: &Account,
) -> Result<(), RotationError> {
    let saga = Saga {
        ctx,
        account,
        lease,
    };
    let state = ctx.ledger.account(&account.name).await?;
    // Only the owner touches the account: a second ledger's sweep would adopt
    // (and later drop) the owner's logins.
    saga.ensure_owner(state.foreign_owner.is_some()).await?;
    if state.suspended {
        // A break-glass revoke that failed half-way is finished here.
        saga.revoke_live(false).await?;
    }
    saga.drain_outbox().await;
    let now = ctx.clock.now();
    let stuck = ctx.ledger.stuck_items(Some(&account.name)).await?;
    let due: Vec<_> = stuck.iter().filter(|i| i.retry_at <= now).collect();
    if due.iter().any(|i| i.kind == "reconcile") {
        if let Err(e) = saga.reconcile().await {
            warn!(account = %account.name, error = %e, "reconciliation still fails");
        }
    }
    if due
        .iter()
        .any(|i| matches!(i.kind.as_str(), "drop-login" | "sweep"))
    {
        // Logins that failed to drop are not live in the ledger: the sweep
        // finds them again.
        saga.sweep(&mut Recovered::default()).await;
    }
    let live = ctx.ledger.live(&account.name).await?;
    for cred in &live {
        if cred.state == CredState::Retiring && cred.retire_at.is_none_or(|t| t <= now) {
            saga.retire_or_stick(cred).await;
        }
    }
    // An item this pass could not retry (its login left the database with the
    // account, its credential was revoked by force) either no longer applies
    // or backs off further, so it never makes housekeeping due forever.
    for item in ctx.ledger.stuck_items(Some(&account.name)).await? {
        if item.retry_at > now {
            continue;
        }
        let obsolete = match item.kind.as_str() {
            "store-serves" | "retire" => !live.iter().any(|c| c.username == item.subject),
            "drop-login" => saga
                .engine()
                .login_info(&item.subject)
                .await
                .is_ok_and(|i| i.is_none()),
            _ => false,
        };
        if obsolete {
            saga.unstick(&item.kind, &item.subject).await;
        } else {
            saga.stick(&item.kind, &item.subject, &item.error, now)
                .await;
        }
    }
    Ok(())
}

/// Retires a credential, taking the account's lease. Unless `forced`, refuses
/// one without a current successor or that a store still serves.
pub async fn retire(
    ctx: &Context,
    account: &Account,
    cred: &Credential,
    forced: bool,
) -> Result<bool, RotationError> {
    ctx.with_lease(&account.name, Duration::from_secs(30), |lease| async move {
        let saga = Saga {
            ctx,
            account,
            lease: &lease,
        };
        saga.retire(cred, forced).await
    })
    .await
}

/// The expiry guard: after a failed rotation, while the database answers,
/// extends the current credential so that it outlives the next retries, step by
/// step and never beyond `issued_at + max_lifetime`. Returns the new expiry.
/// The caller holds the lease.
pub async fn guard_expiry(
    ctx: &Context,
    lease: &Lease,
    account: &Account,
    reason: &str,
) -> Result<Option<DateTime<Utc>>, RotationError> {
    let saga = Saga {
        ctx,
        account,
        lease,
    };
    let live = ctx.ledger.live(&account.name).await?;
    // A credential left half published is served by some store too.
    for cred in live.iter().filter(|c| {
        matches!(c.state, CredState::Verified | CredState::Published) && !c.stores.is_empty()
    }) {
        if let Err(e) = saga.keep_alive(cred).await {
            warn!(account = %account.name, username = %cred.username, error = %e, "cannot extend a credential a store may serve");
        }
    }
    let Some(cur) = live
        .into_iter()
        .rev()
        .find(|c| c.state == CredState::Current)
    else {
        return Ok(None);
    };
    let Some(until) = saga.keep_alive(&cur).await? else {
        return Ok(None);
    };
    let now = ctx.clock.now();
    ctx.ledger
        .set_extended(&account.name, Some(until), Some(reason))
        .await?;
    if let Err(e) = ctx
        .engine_of(&cur)?
        .claim(account, ctx.ledger.id(), now)
        .await
    {
        warn!(account = %account.name, error = %e, "cannot refresh the owner's heartbeat");
    }
    crate::telemetry::extended(&account.name, until.timestamp());
    ctx.event(
        &account.name,
        Some(cur.version),
        "extended",
        &format!(
            "expiry of {} moved from {} to {} while rotations fail",
            cur.username,
            cur.expires_at.to_rfc3339(),
            until.to_rfc3339()
        ),
    )
    .await;
    warn!(account = %account.name, username = %cur.username, from = %cur.expires_at, until = %until, "rotations are failing: extended the current credential's expiry");
    Ok(Some(until))
}

impl Saga<'_> {
    /// Extends the current credential when it would expire within one step,
    /// before anything else of a saga runs. A saga that dies half-way (a
    /// `kill -9`, an OOM, a crash loop) records no failure, so the expiry guard
    /// would never see it; without this, a daemon killed during every attempt
    /// lets the credential the stores serve run out while its successor is
    /// rolled back again and again. Bounded by `max_lifetime` like the guard.
    async fn extend_current_if_due(&self, why: &str) {
        let live = match self.ctx.ledger.live(self.name()).await {
            Ok(live) => live,
            Err(e) => {
                warn!(account = %self.name(), error = %e, "cannot read the ledger to check the current credential's expiry");
                return;
            }
        };
        let Some(cur) = live
            .into_iter()
            .rev()
            .find(|c| c.state == CredState::Current)
        else {
            return;
        };
        if cur.expires_at <= self.now() {
            // Expired already: extending it would revive a login that consumers
            // have been refused on; recovery rotates at once instead.
            return;
        }
        match self.keep_alive(&cur).await {
            Ok(Some(until)) => {
                warn!(account = %self.name(), username = %cur.username, from = %cur.expires_at, until = %until, why, "extended the current credential's expiry: it would have run out before this saga could replace it");
                // Shown like the expiry guard's (status EXTENDED, the metric)
                // until a rotation succeeds.
                let reason = format!("extended before a saga ({why})");
                if let Err(e) = self
                    .ctx
                    .ledger
                    .set_extended(self.name(), Some(until), Some(&reason))
                    .await
                {
                    warn!(account = %self.name(), error = %e, "cannot record the extension");
                }
                crate::telemetry::extended(self.name(), until.timestamp());
                self.ctx
                    .event(
                        self.name(),
                        Some(cur.version),
                        "extended",
                        &format!(
                            "expiry of {} moved from {} to {} ({why})",
                            cur.username,
                            cur.expires_at.to_rfc3339(),
                            until.to_rfc3339()
                        ),
                    )
                    .await;
            }
            Ok(None) => {}
            Err(e) => {
                warn!(account = %self.name(), username = %cur.username, error = %e, "cannot extend the current credential's expiry")
            }
        }
    }

    /// Extends a credential that consumers may still be using so that it
    /// outlives the next retries: when it would expire within one step it moves
    /// to two steps ahead, `step = max(retry_max, overlap) + expiry_margin`,
    /// never beyond `issued_at + max_lifetime`. Only while its database answers.
    /// Returns the new expiry, if it moved.
    async fn keep_alive(&self, cred: &Credential) -> Result<Option<DateTime<Utc>>, RotationError> {
        if cred.strategy == "adopted" {
            return Ok(None);
        }
        let account = self.account;
        let now = self.now();
        let cfg = &self.ctx.inventory.rotation;
        let step = to_chrono(cfg.retry_max.max(account.overlap) + account.expiry_margin);
        if cred.expires_at >= now + step {
            return Ok(None);
        }
        let cap = cred.issued_at + to_chrono(account.max_lifetime);
        let until = (now + step + step).min(cap);
        if until <= cred.expires_at {
            error!(account = %account.name, username = %cred.username, expires_at = %cred.expires_at, max_lifetime = %humantime::format_duration(account.max_lifetime), "rotations keep failing and the credential has reached its max_lifetime: it will expire");
            return Ok(None);
        }
        let engine = self.ctx.engine_of(cred)?;
        engine.ping().await?;
        engine.extend_login(&cred.username, until).await?;
        self.ctx
            .ledger
            .set_expires_at(cred, until, now, self.lease)
            .await?;
        Ok(Some(until))
    }
}

/// Break-glass: revokes the account's retiring credentials, and unless
/// `previous_only` its current one too, then suspends the account until an
/// explicit rotate. The suspension (the intent) is recorded before the first
/// side effect, so a crash half-way is finished by recovery, never undone.
/// The caller holds the lease.
pub async fn revoke(
    ctx: &Context,
    lease: &Lease,
    account: &Account,
    previous_only: bool,
) -> Result<Vec<String>, RotationError> {
    if !previous_only {
        ctx.ledger.set_suspended(&account.name, true).await?;
        ctx.event(
            &account.name,
            None,
            "suspended",
            "break-glass revoke; rotate to issue a new credential",
        )
        .await;
    }
    let saga = Saga {
        ctx,
        account,
        lease,
    };
    saga.revoke_live(previous_only).await
}

impl Saga<'_> {
    async fn revoke_live(&self, previous_only: bool) -> Result<Vec<String>, RotationError> {
        let mut revoked = Vec::new();
        for cred in self.ctx.ledger.live(self.name()).await? {
            let take = match cred.state {
                CredState::Retiring => true,
                _ => !previous_only,
            };
            if !take {
                continue;
            }
            if cred.state.is_middle() {
                self.rollback_login(&cred, None).await?;
                self.ctx
                    .ledger
                    .advance(
                        &cred,
                        cred.state,
                        CredState::Aborted,
                        self.now(),
                        self.lease,
                    )
                    .await?;
            } else {
                self.retire(&cred, true).await?;
            }
            revoked.push(cred.username.clone());
        }
        Ok(revoked)
    }
}

/// Recovers the accounts of the inventory (all, or those named in `only`):
/// start-up reconciliation and `credrotd rebuild`.
pub async fn recover(
    ctx: &Context,
    only: Option<&[String]>,
) -> Vec<(String, Result<Recovered, RotationError>)> {
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
    for account in ctx
        .inventory
        .accounts
        .values()
        .filter(|a| only.is_none_or(|names| names.contains(&a.name)))
    {
        jobs.push(Box::pin(async move {
            let r = match down.get(&account.database) {
                Some(why) => Err(RotationError::Unavailable(why.clone())),
                None => recover_account(ctx, account).await,
            };
            (account.name.clone(), r)
        }));
    }
    stream::iter(jobs)
        .buffer_unordered(ctx.inventory.rotation.concurrency)
        .collect()
        .await
}

/// Recovers one account, taking its lease (waiting up to 30 s).
pub async fn recover_account(ctx: &Context, account: &Account) -> Result<Recovered, RotationError> {
    ctx.with_lease(&account.name, Duration::from_secs(30), |lease| async move {
        recover_leased(ctx, &lease, account).await
    })
    .await
}

/// Finishes or rolls back what a crash left for one account (the same steps
/// the forward path uses), rebuilds a lost ledger from the stores, records
/// login roles the ledger does not know, finishes an interrupted break-glass
/// revoke and sends queued notifications. The caller holds the lease.
pub async fn recover_leased(
    ctx: &Context,
    lease: &Lease,
    account: &Account,
) -> Result<Recovered, RotationError> {
    let saga = Saga {
        ctx,
        account,
        lease,
    };
    let state = ctx.ledger.account(&account.name).await?;
    // Nothing exists yet for a brand-new account: its first issue does it all.
    if saga.engine().owner(account).await?.is_none()
        && ctx.ledger.live(&account.name).await?.is_empty()
    {
        return Ok(Recovered {
            rotate_now: !state.suspended,
            ..Recovered::default()
        });
    }
    saga.ensure_owner(state.foreign_owner.is_some()).await?;
    let mut report = saga.resume().await?;
    if let Some(name) = saga.rebuild().await? {
        report.adopted.push(name);
    }
    saga.sweep(&mut report).await;
    if state.suspended {
        // A break-glass revoke was interrupted: finish it.
        let revoked = saga.revoke_live(false).await?;
        if !revoked.is_empty() {
            warn!(account = %account.name, revoked = ?revoked, "finished an interrupted break-glass revoke");
        }
        return Ok(report);
    }
    saga.drain_outbox().await;
    saga.extend_current_if_due("recovery after a restart").await;

    // A current credential that no longer logs in (dropped or expired behind our
    // back) must be replaced now.
    let live = ctx.ledger.live(&account.name).await?;
    match live.iter().rev().find(|c| c.state == CredState::Current) {
        Some(cur) if cur.strategy != "adopted" => {
            match saga.engine().login_info(&cur.username).await? {
                Some(info)
                    if info.can_login && info.valid_until.is_none_or(|v| v > ctx.clock.now()) => {}
                _ => {
                    warn!(account = %account.name, username = %cur.username, "current credential cannot log in; rotating now");
                    report.rotate_now = true;
                }
            }
        }
        Some(_) => {}
        None => report.rotate_now = true,
    }
    Ok(report)
}

/// Records an existing static role as the account's current credential without
/// changing it (`adopt: true`). Its first rotation is the next scheduled fire.
pub async fn adopt(ctx: &Context, lease: &Lease, account: &Account) -> Result<(), RotationError> {
    let Strategy::Static { role, adopt: true } = &account.strategy else {
        return Ok(());
    };
    let now = ctx.clock.now();
    let next = account.schedule.next_after(now);
    let cred = ctx
        .ledger
        .adopt(
            NewCredential {
                account: &account.name,
                database: &account.database,
                strategy: "adopted",
                username: role,
                issued_at: now,
                expires_at: next.unwrap_or(now),
            },
            CredState::Current,
            None,
            None,
            now,
            lease,
        )
        .await?;
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
