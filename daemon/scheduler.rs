//! The scheduler: decides when each account rotates and when each retiring
//! credential's overlap ends, and runs the saga for them.
//!
//! The ledger is the source of truth: at every wake-up the scheduler reads it,
//! computes each account's next event with pure functions of `(now, schedule,
//! ledger state)`, starts what is due (bounded by `rotation.concurrency`, never
//! two tasks for one account), and sleeps on the injected clock until the next
//! event, a finished task or shutdown. Every task it spawns lives in its
//! `JoinSet` and is joined before `run` returns.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::inventory::{Account, Strategy};
use crate::ledger::{AccountState, CredState, Credential, LedgerError};
use crate::rotation::{self, Context, RotationError};
use crate::schedule::{backoff, to_chrono};

/// Longest sleep between two looks at the ledger, so that a rotation made by a
/// `credrotd rotate` in another process is noticed.
pub const LEDGER_REFRESH: Duration = Duration::from_secs(300);

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
}

impl Due {
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Due::Rotate { at, .. } | Due::Retire { at, .. } => *at,
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
        let rotate = match current {
            // A failed attempt waits for its backoff, with or without a current
            // credential: retrying at once would hammer a database that is down.
            _ if state.failures > 0 => Some((state.retry_at.unwrap_or(now), "retry")),
            None => Some((now, "no current credential")),
            Some(cur) => account
                .schedule
                .next_after(cur.issued_at)
                .map(|at| (at, "schedule")),
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
    /// Rotate these accounts now (all if empty).
    RotateNow(Vec<String>),
    /// Swap in a freshly validated inventory (reload).
    Reload(Arc<Context>),
    /// Look at the ledger again now (another path changed it).
    Wake,
    /// Answer to show the loop is alive (the systemd watchdog).
    Ping(tokio::sync::oneshot::Sender<()>),
}

enum Done {
    Rotated(String, Result<rotation::Rotated, RotationError>, Duration),
    Retired(String, Result<(), RotationError>),
}

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
    let mut forced: HashSet<String> = HashSet::new();
    tokio::pin!(shutdown);
    // Start-up recovery, abandoned (resumably) if we are told to stop.
    let recovered = tokio::select! {
        r = rotation::recover(&ctx) => r,
        _ = &mut shutdown => {
            info!("shutdown during start-up recovery");
            return Ok(());
        }
    };
    for (account, result) in recovered {
        match result {
            Ok(r) => {
                if r.rotate_now {
                    forced.insert(account.clone());
                }
                if !(r.rolled_back.is_empty()
                    && r.promoted.is_empty()
                    && r.orphans_dropped.is_empty())
                {
                    info!(%account, rolled_back = ?r.rolled_back, promoted = ?r.promoted, orphans = ?r.orphans_dropped, "recovered");
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
                    .with_lease(&account.name, Duration::from_secs(30), || {
                        rotation::adopt(&ctx, account)
                    })
                    .await;
                if let Err(e) = res {
                    warn!(account = %account.name, error = %e, "cannot adopt static role");
                }
            }
        }
    }
    info!(accounts = ctx.inventory.accounts.len(), "scheduler started");
    on_ready(ctx.inventory.accounts.len());

    let permits = Arc::new(Semaphore::new(ctx.inventory.rotation.concurrency));
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut busy: HashSet<String> = HashSet::new();
    // Accounts held back until a time: their last revocation failed, or another
    // process held their lease.
    let mut hold: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    let mut ledger_failures = 0u32;

    loop {
        let now = ctx.clock.now();
        // The ledger being unreadable (disk, locks) is waited out, not fatal.
        let read = async {
            Ok::<_, LedgerError>((ctx.ledger.accounts().await?, ctx.ledger.all_live().await?))
        };
        let (mut states, live) = match read.await {
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
        publish_schedule(&ctx, &states, &live, now);
        let mut wake = now + to_chrono(LEDGER_REFRESH);
        for account in ctx.inventory.accounts.values() {
            if busy.contains(&account.name) {
                continue;
            }
            let mine: Vec<&Credential> =
                live.iter().filter(|c| c.account == account.name).collect();
            let mut items = due(account, &states[&account.name], &mine, now);
            if let Some(until) = hold.get(&account.name) {
                if *until > now {
                    // A requested rotation stays requested until the hold ends.
                    wake = wake.min(*until);
                    continue;
                }
            }
            if forced.remove(&account.name) {
                items.insert(
                    0,
                    Due::Rotate {
                        at: now,
                        why: "requested",
                    },
                );
            }
            let Some(first) = items.first() else { continue };
            if first.at() > now {
                wake = wake.min(first.at());
                continue;
            }
            busy.insert(account.name.clone());
            let ctx = ctx.clone();
            let permits = permits.clone();
            let name = account.name.clone();
            match first.clone() {
                Due::Rotate { why, .. } => {
                    tasks.spawn(async move {
                        let _permit = permits.acquire_owned().await;
                        let started = std::time::Instant::now();
                        let res = rotate_one(&ctx, &name, why).await;
                        Done::Rotated(name, res, started.elapsed())
                    });
                }
                Due::Retire { cred, .. } => {
                    tasks.spawn(async move {
                        let _permit = permits.acquire_owned().await;
                        let res = retire_one(&ctx, &name, cred).await;
                        Done::Retired(name, res)
                    });
                }
            }
        }

        tokio::select! {
            _ = &mut shutdown => break,
            Some(msg) = control.recv() => match msg {
                Control::RotateNow(names) => {
                    let names = if names.is_empty() { ctx.inventory.accounts.keys().cloned().collect() } else { names };
                    forced.extend(names.into_iter().filter(|n| ctx.inventory.accounts.contains_key(n)));
                }
                Control::Reload(fresh) => {
                    // In-flight tasks keep the context they started with.
                    ctx = fresh;
                    hold.retain(|name, _| ctx.inventory.accounts.contains_key(name));
                }
                Control::Wake => {}
                Control::Ping(reply) => {
                    let _ = reply.send(());
                }
            },
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                match joined {
                    Ok(done) => handle_done(&ctx, done, &mut busy, &mut hold).await,
                    Err(e) => error!(error = %e, "a rotation task panicked"),
                }
                // Drain whatever else finished without another full pass per task.
                while let Some(joined) = tasks.try_join_next() {
                    match joined {
                        Ok(done) => handle_done(&ctx, done, &mut busy, &mut hold).await,
                        Err(e) => error!(error = %e, "a rotation task panicked"),
                    }
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
                handle_done(&ctx, done, &mut busy, &mut hold).await;
            }
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        warn!("in-flight steps did not finish in time; the next start resumes them");
        tasks.shutdown().await;
    }
    Ok(())
}

/// Exports each account's expiry and next rotation, and a systemd status line.
fn publish_schedule(
    ctx: &Context,
    states: &BTreeMap<String, AccountState>,
    live: &[Credential],
    now: DateTime<Utc>,
) {
    let mut next: Option<(DateTime<Utc>, &str)> = None;
    let mut failing = 0;
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
                Due::Retire { .. } => None,
            });
        crate::telemetry::schedule(&account.name, expiry, rotate_at.map(|t| t.timestamp()));
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
    crate::systemd::status(&line);
}

async fn rotate_one(
    ctx: &Context,
    name: &str,
    why: &'static str,
) -> Result<rotation::Rotated, RotationError> {
    let account = ctx.account(name)?;
    info!(account = name, reason = why, "rotating");
    ctx.with_lease(name, Duration::ZERO, || rotation::rotate(ctx, account))
        .await
}

async fn retire_one(ctx: &Context, name: &str, cred: i64) -> Result<(), RotationError> {
    let account = ctx.account(name)?;
    ctx.with_lease(name, Duration::ZERO, || async {
        let c = ctx.ledger.get(cred).await?;
        if c.state != CredState::Retiring {
            return Ok(());
        }
        rotation::retire(ctx, account, &c, false).await
    })
    .await
}

async fn handle_done(
    ctx: &Context,
    done: Done,
    busy: &mut HashSet<String>,
    hold: &mut BTreeMap<String, DateTime<Utc>>,
) {
    match done {
        Done::Rotated(name, Err(RotationError::Busy(_)), _)
        | Done::Retired(name, Err(RotationError::Busy(_))) => {
            // Another process (a `credrotd rotate`) is working on it: not a
            // failure; look again shortly.
            busy.remove(&name);
            hold.insert(name, ctx.clock.now() + chrono::Duration::seconds(5));
        }
        Done::Rotated(name, res, took) => {
            busy.remove(&name);
            hold.remove(&name);
            // Mirror the backoff in memory too, so that a ledger that cannot
            // record the failure does not turn into a hot retry loop.
            if let Some(retry_at) = observe_rotation(ctx, &name, &res, took).await {
                hold.insert(name, retry_at);
            }
        }
        Done::Retired(name, res) => {
            busy.remove(&name);
            match res {
                Ok(()) => {
                    hold.remove(&name);
                }
                Err(e) => {
                    let until = ctx.clock.now() + to_chrono(ctx.inventory.rotation.retry_initial);
                    count_error(&e);
                    warn!(account = %name, error = %e, retry_at = %until, "revocation failed; will retry");
                    hold.insert(name, until);
                }
            }
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
        Err(RotationError::Busy(_)) => None,
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
                current_expires_in = %humantime::format_duration(left.to_std().unwrap_or_default()),
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
