//! The scheduler: decides when each account rotates and when each retiring
//! credential's overlap ends, and runs the saga for them.
//!
//! The ledger is the source of truth: at every wake-up the scheduler reads it,
//! computes each account's next event with pure functions of `(now, schedule,
//! ledger state)`, starts what is due (bounded by `rotation.concurrency`, never
//! two tasks for one account), and sleeps on the injected clock until the next
//! event, a finished task or shutdown. Every task it spawns lives in its
//! `JoinSet` and is joined before `run` returns.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::inventory::{Account, Strategy};
use crate::ledger::{AccountState, CredState, Credential, LedgerError};
use crate::rotation::{self, Context, RotationError, Trigger};
use crate::schedule::{backoff, to_chrono};

/// Longest sleep between two looks at the ledger, so that a rotation made by a
/// `credrotd rotate` in another process is noticed.
pub const LEDGER_REFRESH: Duration = Duration::from_secs(300);

/// How often the run loop makes sure it holds its presence lock in every
/// database (see `Engine::hold_presence`).
pub const PRESENCE_REFRESH: Duration = Duration::from_secs(30);

/// How long shutdown waits for in-flight steps before abandoning them (the
/// ledger makes them resumable).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What is due for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    Rotate {
        at: DateTime<Utc>,
        why: &'static str,
    },
    Retire {
        at: DateTime<Utc>,
        cred: i64,
    },
    /// Stuck items to retry or an outbox item to send.
    Housekeep {
        at: DateTime<Utc>,
    },
}

impl Due {
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Due::Rotate { at, .. } | Due::Retire { at, .. } | Due::Housekeep { at } => *at,
        }
    }
}

/// The events coming up for an account, earliest first. Pure.
pub fn due(
    account: &Account,
    state: &AccountState,
    live: &[&Credential],
    now: DateTime<Utc>,
) -> Vec<Due> {
    let mut out = Vec::new();
    for c in live.iter().filter(|c| c.state == CredState::Retiring) {
        out.push(Due::Retire {
            at: c.retire_at.unwrap_or(now),
            cred: c.id,
        });
    }
    if !state.suspended {
        let current = live.iter().rev().find(|c| c.state == CredState::Current);
        // A rotation never cuts a predecessor's overlap short by itself: when a
        // late (retried) rotation lands close to the next fire, that fire waits
        // for the overlap to end. The credential's expiry (next fire + overlap
        // + margin) covers the wait.
        let overlap_end = live
            .iter()
            .filter(|c| c.state == CredState::Retiring)
            .filter_map(|c| c.retire_at)
            .max();
        let after_overlap =
            |at: DateTime<Utc>| overlap_end.map_or(at, |end| if end > at { end } else { at });
        let rotate = match current {
            // A failed attempt waits for its backoff, with or without a current
            // credential: retrying at once would hammer a database that is down.
            _ if state.failures > 0 => {
                Some((after_overlap(state.retry_at.unwrap_or(now)), "retry"))
            }
            None => Some((now, "no current credential")),
            Some(cur) => account
                .schedule
                .next_after(cur.issued_at)
                .map(|at| (after_overlap(at), "schedule")),
        };
        if let Some((at, why)) = rotate {
            out.push(Due::Rotate { at, why });
        }
    }
    out.sort_by_key(Due::at);
    out
}

/// A request from outside the loop.
pub enum Control {
    /// Rotate these accounts now (all if empty): SIGUSR1. Suspended accounts
    /// are skipped.
    RotateNow(Vec<String>),
    /// An operator's `rotate ACCOUNT` (admin API): runs in a task the scheduler
    /// owns, so a client that goes away does not cancel it; lifts a suspension.
    Rotate {
        account: String,
        reply: oneshot::Sender<Result<rotation::Rotated, RotationError>>,
    },
    /// A break-glass revoke (admin API), run like [`Control::Rotate`].
    Revoke {
        account: String,
        previous_only: bool,
        reply: oneshot::Sender<Result<Vec<String>, RotationError>>,
    },
    /// Swap in a freshly validated inventory (reload).
    Reload(Arc<Context>),
    /// Look at the ledger again now (another path changed it).
    Wake,
    /// Answer to show the loop is alive (the systemd watchdog).
    Ping(tokio::sync::oneshot::Sender<()>),
}

enum Done {
    Rotated(
        String,
        Result<rotation::Rotated, RotationError>,
        Duration,
        Trigger,
    ),
    Housekept(String, Result<(), RotationError>),
    Revoked(String),
}

/// A rotation the loop still owes: its trigger and, for an operator's request,
/// where to send the result.
type Reply = oneshot::Sender<Result<rotation::Rotated, RotationError>>;
type RevokeReply = oneshot::Sender<Result<Vec<String>, RotationError>>;

/// Runs the daemon loop until `shutdown` resolves. Recovery runs first.
pub async fn run(
    ctx: Arc<Context>,
    control: tokio::sync::mpsc::Receiver<Control>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LedgerError> {
    run_with(ctx, control, shutdown, |_| {}).await
}

/// [`run`], calling `on_ready` with the number of accounts once start-up
/// recovery is done (systemd's READY=1).
pub async fn run_with(
    mut ctx: Arc<Context>,
    mut control: tokio::sync::mpsc::Receiver<Control>,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(usize),
) -> Result<(), LedgerError> {
    // Rotations owed to an account, by trigger (the strongest wins).
    let mut forced: BTreeMap<String, Trigger> = BTreeMap::new();
    tokio::pin!(shutdown);
    // Start-up recovery, abandoned (resumably) if we are told to stop.
    let recovered = tokio::select! {
        r = rotation::recover(&ctx, None) => r,
        _ = &mut shutdown => {
            info!("shutdown during start-up recovery");
            return Ok(());
        }
    };
    for (account, result) in recovered {
        match result {
            Ok(r) => {
                if r.rotate_now {
                    forced.entry(account.clone()).or_insert(Trigger::Schedule);
                }
                if !(r.rolled_back.is_empty()
                    && r.promoted.is_empty()
                    && r.orphans_dropped.is_empty()
                    && r.adopted.is_empty())
                {
                    info!(%account, rolled_back = ?r.rolled_back, promoted = ?r.promoted, orphans = ?r.orphans_dropped, adopted = ?r.adopted, "recovered");
                }
            }
            Err(e) => {
                warn!(%account, error = %e, "recovery failed; will retry with the account's next rotation")
            }
        }
    }
    for account in ctx.inventory.accounts.values() {
        if let Strategy::Static { adopt: true, .. } = account.strategy {
            if ctx.ledger.live(&account.name).await?.is_empty() {
                let res = ctx
                    .with_lease(&account.name, Duration::from_secs(30), |lease| {
                        let ctx = &ctx;
                        async move { rotation::adopt(ctx, &lease, account).await }
                    })
                    .await;
                match res {
                    Ok(()) => {
                        forced.remove(&account.name);
                    }
                    Err(e) => {
                        warn!(account = %account.name, error = %e, "cannot adopt static role")
                    }
                }
            }
        }
    }
    // `--take-over` applies to start-up only: from here on this ledger owns what
    // it took, and another daemon started with the flag cannot flap with it.
    ctx.take_over
        .store(false, std::sync::atomic::Ordering::SeqCst);
    info!(accounts = ctx.inventory.accounts.len(), "scheduler started");
    on_ready(ctx.inventory.accounts.len());

    let permits = Arc::new(Semaphore::new(ctx.inventory.rotation.concurrency));
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut busy: HashSet<String> = HashSet::new();
    // Accounts held back until a time: another process held their lease, or
    // another ledger owns them.
    let mut hold: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    // Housekeeping that just ran and found nothing more to do before then.
    let mut hk_hold: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    let mut replies: BTreeMap<String, VecDeque<Reply>> = BTreeMap::new();
    let mut revokes: BTreeMap<String, VecDeque<(bool, RevokeReply)>> = BTreeMap::new();
    let mut ledger_failures = 0u32;
    let mut presence_at: Option<tokio::time::Instant> = None;

    loop {
        let now = ctx.clock.now();
        // Tell other ledgers' daemons, through each database, that this one
        // runs (they must not take its accounts), and take the lock again after
        // a database restart. Bounded, so a database that is down costs little.
        if presence_at.is_none_or(|t| t.elapsed() >= PRESENCE_REFRESH) {
            presence_at = Some(tokio::time::Instant::now());
            for (name, engine) in &ctx.engines {
                let held = tokio::time::timeout(
                    Duration::from_secs(3),
                    engine.hold_presence(ctx.ledger.id()),
                )
                .await;
                if !matches!(held, Ok(Ok(()))) {
                    warn!(database = %name, "cannot hold the presence lock now; retrying");
                }
            }
        }
        // The ledger being unreadable (disk, locks) is waited out, not fatal.
        let read = async {
            Ok::<_, LedgerError>((
                ctx.ledger.accounts().await?,
                ctx.ledger.all_live().await?,
                ctx.ledger.stuck_items(None).await?,
                ctx.ledger.outbox().await?,
            ))
        };
        let (mut states, live, stuck, outbox) = match read.await {
            Ok(v) => {
                ledger_failures = 0;
                v
            }
            Err(e) => {
                ledger_failures += 1;
                let pause = backoff(
                    ledger_failures,
                    Duration::from_secs(1),
                    Duration::from_secs(60),
                );
                error!(error = %e, retry_in = ?pause, "cannot read the ledger");
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
        };
        for name in ctx.inventory.accounts.keys() {
            states.entry(name.clone()).or_insert_with(|| AccountState {
                account: name.clone(),
                ..AccountState::default()
            });
        }
        publish_schedule(&ctx, &states, &live, &stuck, now);
        let mut wake = now + to_chrono(LEDGER_REFRESH);
        for account in ctx.inventory.accounts.values() {
            let name = &account.name;
            if busy.contains(name) {
                continue;
            }
            if let Some(until) = hold.get(name) {
                if *until > now {
                    // A requested rotation stays requested until the hold ends.
                    wake = wake.min(*until);
                    continue;
                }
            }
            let state = &states[name];
            // A break-glass revoke comes first.
            if let Some((previous_only, reply)) = revokes.get_mut(name).and_then(|q| q.pop_front())
            {
                busy.insert(name.clone());
                let (ctx, name) = (ctx.clone(), name.clone());
                tasks.spawn(guarded(name.clone(), async move {
                    let res = revoke_account(&ctx, &name, previous_only).await;
                    let _ = reply.send(res);
                    Done::Revoked(name)
                }));
                continue;
            }
            let mine: Vec<&Credential> = live.iter().filter(|c| &c.account == name).collect();
            let mut items = due(account, state, &mine, now);
            let hk_floor = hk_hold.get(name).copied().unwrap_or(now);
            let housekeeping_at = stuck
                .iter()
                .filter(|i| &i.account == name)
                .map(|i| i.retry_at)
                .chain(
                    outbox
                        .iter()
                        .filter(|o| &o.account == name)
                        .map(|o| o.retry_at),
                )
                .min();
            if let Some(at) = housekeeping_at {
                items.push(Due::Housekeep { at });
            }
            for item in &mut items {
                match item {
                    Due::Retire { at, cred } => {
                        // A retirement that is stuck waits for its own backoff.
                        let backoff = mine
                            .iter()
                            .find(|c| c.id == *cred)
                            .and_then(|c| {
                                stuck
                                    .iter()
                                    .filter(|i| &i.account == name && i.subject == c.username)
                                    .map(|i| i.retry_at)
                                    .max()
                            })
                            .unwrap_or(now);
                        *at = (*at).max(hk_floor).max(backoff);
                    }
                    Due::Housekeep { at } => *at = (*at).max(hk_floor),
                    Due::Rotate { .. } => {}
                }
            }
            let explicit = replies.get(name).is_some_and(|q| !q.is_empty());
            let trigger = if explicit {
                Some(Trigger::Explicit)
            } else {
                forced.get(name).copied()
            };
            match trigger {
                Some(Trigger::Explicit) => items.insert(
                    0,
                    Due::Rotate {
                        at: now,
                        why: "requested",
                    },
                ),
                // Only an operator naming the account lifts a suspension.
                Some(_) if state.suspended => {
                    forced.remove(name);
                }
                Some(_) => items.insert(
                    0,
                    Due::Rotate {
                        at: now,
                        why: "requested",
                    },
                ),
                None => {}
            }
            items.sort_by_key(Due::at);
            let Some(first) = items.first() else { continue };
            if first.at() > now {
                wake = wake.min(first.at());
                continue;
            }
            busy.insert(name.clone());
            let ctx = ctx.clone();
            let permits = permits.clone();
            let name = name.clone();
            match first.clone() {
                Due::Rotate { why, .. } => {
                    let trigger = trigger.unwrap_or(Trigger::Schedule);
                    forced.remove(&name);
                    let reply = if trigger == Trigger::Explicit {
                        replies.get_mut(&name).and_then(|q| q.pop_front())
                    } else {
                        None
                    };
                    tasks.spawn(guarded(name.clone(), async move {
                        let _permit = permits.acquire_owned().await;
                        let started = std::time::Instant::now();
                        info!(account = %name, reason = why, "rotating");
                        let wait = if reply.is_some() {
                            Duration::from_secs(60)
                        } else {
                            Duration::ZERO
                        };
                        let res = rotate_account(&ctx, &name, trigger, wait).await;
                        let took = started.elapsed();
                        let res = match reply {
                            Some(reply) => {
                                observe_rotation(&ctx, &name, &res, took).await;
                                // The caller may be gone; the work is done either way.
                                let _ = reply.send(res);
                                Ok(None)
                            }
                            None => res.map(Some),
                        };
                        match res {
                            Ok(Some(r)) => Done::Rotated(name, Ok(r), took, trigger),
                            Ok(None) => Done::Housekept(name, Ok(())),
                            Err(e) => Done::Rotated(name, Err(e), took, trigger),
                        }
                    }));
                }
                Due::Retire { .. } | Due::Housekeep { .. } => {
                    tasks.spawn(guarded(name.clone(), async move {
                        let _permit = permits.acquire_owned().await;
                        let res = housekeep_account(&ctx, &name).await;
                        Done::Housekept(name, res)
                    }));
                }
            }
        }

        tokio::select! {
            _ = &mut shutdown => break,
            Some(msg) = control.recv() => match msg {
                Control::RotateNow(names) => {
                    let names = if names.is_empty() { ctx.inventory.accounts.keys().cloned().collect() } else { names };
                    for n in names.into_iter().filter(|n| ctx.inventory.accounts.contains_key(n)) {
                        if states.get(&n).is_some_and(|s| s.suspended) {
                            info!(account = %n, "suspended by a break-glass revoke; not rotated by a rotate-all (rotate it by name)");
                            continue;
                        }
                        forced.insert(n, Trigger::Forced);
                    }
                }
                Control::Rotate { account, reply } => {
                    if ctx.inventory.accounts.contains_key(&account) {
                        hold.remove(&account);
                        replies.entry(account).or_default().push_back(reply);
                    } else {
                        let _ = reply.send(Err(RotationError::UnknownAccount(account)));
                    }
                }
                Control::Revoke { account, previous_only, reply } => {
                    if ctx.inventory.accounts.contains_key(&account) {
                        hold.remove(&account);
                        revokes.entry(account).or_default().push_back((previous_only, reply));
                    } else {
                        let _ = reply.send(Err(RotationError::UnknownAccount(account)));
                    }
                }
                Control::Reload(fresh) => {
                    // In-flight tasks keep the context they started with.
                    ctx = fresh;
                    hold.retain(|name, _| ctx.inventory.accounts.contains_key(name));
                    forced.retain(|name, _| ctx.inventory.accounts.contains_key(name));
                    // Callers waiting on an account the reload removed get an answer.
                    for (name, queue) in replies.iter_mut().filter(|(n, _)| !ctx.inventory.accounts.contains_key(*n)) {
                        for reply in queue.drain(..) {
                            let _ = reply.send(Err(RotationError::UnknownAccount(name.clone())));
                        }
                    }
                    for (name, queue) in revokes.iter_mut().filter(|(n, _)| !ctx.inventory.accounts.contains_key(*n)) {
                        for (_, reply) in queue.drain(..) {
                            let _ = reply.send(Err(RotationError::UnknownAccount(name.clone())));
                        }
                    }
                }
                Control::Wake => {}
                Control::Ping(reply) => {
                    let _ = reply.send(());
                }
            },
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                let mut joined = Some(joined);
                // Drain whatever else finished without another full pass per task.
                while let Some(j) = joined.take().or_else(|| tasks.try_join_next()) {
                    match j {
                        Ok(done) => handle_done(&ctx, done, &mut busy, &mut hold, &mut hk_hold, &mut forced).await,
                        // `guarded` turns panics into results; only an abort lands here.
                        Err(e) => error!(error = %e, "a saga task was aborted"),
                    }
                }
                if tasks.is_empty() {
                    // The burst is over: give back what it freed.
                    crate::memory::release_freed();
                }
            }
            _ = ctx.clock.sleep_until(wake) => {}
        }
    }

    info!(
        in_flight = tasks.len(),
        "shutting down; finishing in-flight steps"
    );
    let drain = async {
        while let Some(joined) = tasks.join_next().await {
            if let Ok(done) = joined {
                handle_done(&ctx, done, &mut busy, &mut hold, &mut hk_hold, &mut forced).await;
            }
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        warn!("in-flight steps did not finish in time; the next start resumes them");
        tasks.shutdown().await;
        if let Err(e) = ctx.ledger.release_all_mine().await {
            warn!(error = %e, "cannot release the abandoned sagas' leases; they expire on their own");
        }
    }
    Ok(())
}

/// Runs a saga task so that a panic anywhere in it becomes a recorded failure
/// that frees its account, never a task the loop cannot attribute.
async fn guarded(name: String, fut: impl Future<Output = Done>) -> Done {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(done) => done,
        Err(panic) => {
            let message = rotation::panic_message(&panic);
            error!(account = %name, error = %message, "saga task panicked");
            Done::Rotated(
                name.clone(),
                Err(RotationError::Panicked {
                    account: name,
                    message,
                }),
                Duration::ZERO,
                Trigger::Schedule,
            )
        }
    }
}

/// Exports each account's expiry, next rotation and housekeeping state, and a
/// systemd status line.
fn publish_schedule(
    ctx: &Context,
    states: &BTreeMap<String, AccountState>,
    live: &[Credential],
    stuck: &[crate::ledger::StuckItem],
    now: DateTime<Utc>,
) {
    let mut next: Option<(DateTime<Utc>, &str)> = None;
    let mut failing = 0;
    let mut stuck_total = 0;
    for account in ctx.inventory.accounts.values() {
        let mine: Vec<&Credential> = live.iter().filter(|c| c.account == account.name).collect();
        let state = &states[&account.name];
        let expiry = mine
            .iter()
            .rev()
            .find(|c| c.state == CredState::Current)
            .map(|c| c.expires_at.timestamp());
        let rotate_at = due(account, state, &mine, now)
            .into_iter()
            .find_map(|d| match d {
                Due::Rotate { at, .. } => Some(at),
                _ => None,
            });
        crate::telemetry::schedule(&account.name, expiry, rotate_at.map(|t| t.timestamp()));
        let n_stuck = stuck.iter().filter(|i| i.account == account.name).count();
        stuck_total += n_stuck;
        crate::telemetry::housekeeping(
            &account.name,
            n_stuck,
            state.extended_until.map(|t| t.timestamp()),
            state.foreign_owner.is_some(),
        );
        if let Some(at) = rotate_at {
            if next.is_none_or(|(n, _)| at < n) {
                next = Some((at, &account.name));
            }
        }
        if state.failures > 0 {
            failing += 1;
        }
    }
    let mut line = format!("{} accounts", ctx.inventory.accounts.len());
    if let Some((at, name)) = next {
        line.push_str(&format!(
            "; next rotation {name} at {}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    if failing > 0 {
        line.push_str(&format!("; {failing} failing"));
    }
    if stuck_total > 0 {
        line.push_str(&format!("; {stuck_total} stuck items"));
    }
    crate::systemd::status(&line);
}

/// Rotates one account holding its lease (waiting up to `wait`), and when the
/// rotation fails while the database answers, lets the expiry guard extend
/// the current credential. Used by the scheduler, the admin API and the CLI.
pub async fn rotate_account(
    ctx: &Context,
    name: &str,
    trigger: Trigger,
    wait: Duration,
) -> Result<rotation::Rotated, RotationError> {
    let account = ctx.account(name)?;
    ctx.with_lease(name, wait, |lease| async move {
        let res = rotation::rotate_leased(ctx, &lease, account, trigger).await;
        if let Err(e) = &res {
            if guards_expiry(e) {
                if let Err(ge) = rotation::guard_expiry(ctx, &lease, account, &e.to_string()).await
                {
                    warn!(account = %name, error = %ge, "cannot extend the current credential's expiry");
                }
            }
        }
        res
    })
    .await
}

/// Whether a failed rotation should make the expiry guard look at the current
/// credential: not when nothing was attempted.
fn guards_expiry(e: &RotationError) -> bool {
    !matches!(
        e,
        RotationError::Busy(_)
            | RotationError::Suspended(_)
            | RotationError::NotOwner { .. }
            | RotationError::UnknownAccount(_)
            | RotationError::Crash(_)
    )
}

async fn housekeep_account(ctx: &Context, name: &str) -> Result<(), RotationError> {
    let account = ctx.account(name)?;
    ctx.with_lease(name, Duration::ZERO, |lease| async move {
        rotation::housekeep(ctx, &lease, account).await
    })
    .await
}

async fn revoke_account(
    ctx: &Context,
    name: &str,
    previous_only: bool,
) -> Result<Vec<String>, RotationError> {
    let account = ctx.account(name)?;
    ctx.with_lease(name, Duration::from_secs(60), |lease| async move {
        rotation::revoke(ctx, &lease, account, previous_only).await
    })
    .await
}

async fn handle_done(
    ctx: &Context,
    done: Done,
    busy: &mut HashSet<String>,
    hold: &mut BTreeMap<String, DateTime<Utc>>,
    hk_hold: &mut BTreeMap<String, DateTime<Utc>>,
    forced: &mut BTreeMap<String, Trigger>,
) {
    let now = ctx.clock.now();
    match done {
        Done::Rotated(name, Err(RotationError::Busy(_)), _, trigger) => {
            // Another process (a `credrotd rotate`) is working on it: not a
            // failure; a requested rotation stays requested; look again shortly.
            busy.remove(&name);
            if trigger != Trigger::Schedule {
                forced.entry(name.clone()).or_insert(trigger);
            }
            hold.insert(name, now + chrono::Duration::seconds(5));
        }
        Done::Housekept(name, Err(RotationError::Busy(_))) => {
            busy.remove(&name);
            hold.insert(name, now + chrono::Duration::seconds(5));
        }
        Done::Rotated(name, Err(RotationError::NotOwner { until, .. }), _, _) => {
            busy.remove(&name);
            let cap = now + to_chrono(LEDGER_REFRESH);
            hold.insert(name, until.map_or(cap, |u| u.min(cap).max(now)));
        }
        Done::Rotated(name, Err(RotationError::Suspended(_)), _, _) => {
            busy.remove(&name);
        }
        Done::Rotated(name, res, took, _) => {
            busy.remove(&name);
            hold.remove(&name);
            // Mirror the backoff in memory too, so that a ledger that cannot
            // record the failure does not turn into a hot retry loop.
            if let Some(retry_at) = observe_rotation(ctx, &name, &res, took).await {
                hold.insert(name, retry_at);
            }
        }
        Done::Housekept(name, res) => {
            busy.remove(&name);
            if let Err(e) = res {
                count_error(&e);
                warn!(account = %name, error = %e, "housekeeping failed; will retry");
            }
            // What is still stuck carries its own retry time; this only keeps an
            // item that made no progress from running again at once.
            hk_hold.insert(name, now + to_chrono(ctx.inventory.rotation.retry_initial));
        }
        Done::Revoked(name) => {
            busy.remove(&name);
        }
    }
}

/// Records a rotation's outcome wherever it ran (scheduler or admin API): the
/// metrics, the log, and on failure the ledger's retry state.
/// Returns when to retry after a failure.
pub async fn observe_rotation(
    ctx: &Context,
    name: &str,
    res: &Result<rotation::Rotated, RotationError>,
    took: Duration,
) -> Option<DateTime<Utc>> {
    match res {
        Ok(r) => {
            crate::telemetry::rotation(name, true, took.as_secs_f64());
            info!(account = %name, version = r.version, username = %r.username, expires_at = %r.expires_at, "rotation complete");
            None
        }
        Err(
            RotationError::Busy(_) | RotationError::Suspended(_) | RotationError::NotOwner { .. },
        ) => None,
        Err(e) => {
            crate::telemetry::rotation(name, false, took.as_secs_f64());
            count_error(e);
            Some(record_failure(ctx, name, e).await)
        }
    }
}

fn count_error(e: &RotationError) {
    match e {
        RotationError::Engine(e) => crate::telemetry::database_error(e.database()),
        RotationError::Store(e) => crate::telemetry::store_error(e.store()),
        _ => {}
    }
}

async fn record_failure(ctx: &Context, name: &str, e: &RotationError) -> DateTime<Utc> {
    let now = ctx.clock.now();
    let state = ctx.ledger.account(name).await.unwrap_or_default();
    let attempt = (state.failures + 1).clamp(1, u32::MAX as i64) as u32;
    let cfg = &ctx.inventory.rotation;
    let retry_at = now + to_chrono(backoff(attempt, cfg.retry_initial, cfg.retry_max));
    if let Err(le) = ctx
        .ledger
        .record_failure(name, now, &e.to_string(), retry_at)
        .await
    {
        error!(account = name, error = %le, "cannot record rotation failure");
    }
    let _ = ctx
        .ledger
        .event(now, name, None, "failed", &e.to_string())
        .await;
    let current = ctx
        .ledger
        .live(name)
        .await
        .ok()
        .and_then(|l| l.into_iter().rev().find(|c| c.state == CredState::Current));
    match current {
        Some(c) => {
            let left = c.expires_at - now;
            warn!(
                account = name,
                attempt,
                error = %e,
                retry_at = %retry_at,
                current_expires_at = %c.expires_at,
                current_expires_in = %humantime::format_duration(std::time::Duration::from_secs(left.num_seconds().max(0) as u64)),
                "rotation failed; the current credential expires then if no rotation succeeds"
            );
        }
        None => {
            warn!(account = name, attempt, error = %e, retry_at = %retry_at, "rotation failed; the account has no current credential")
        }
    }
    retry_at
}

#[cfg(test)]
mod tests;
