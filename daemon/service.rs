//! `credrotd run`: the daemon around the scheduler. It builds the saga context,
//! binds the admin socket and the metrics listener, turns signals into control
//! messages once, reloads the inventory on SIGHUP or `POST /v1/reload` (validate,
//! then swap; a broken file leaves the running inventory in place), talks to
//! systemd, and on SIGTERM/SIGINT stops taking work, lets in-flight steps finish
//! and exits. Every task it starts is joined before `run` returns.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::admin;
use crate::api::{
    AccountDetail, AccountStatus, EventEntry, ReloadResponse, RevokeResponse, RotateResponse,
};
use crate::clock::SharedClock;
use crate::inventory::{self, Inventory};
use crate::ledger::Ledger;
use crate::rotation::{self, Context, RotationError};
use crate::scheduler::{self, Control};
use crate::{engine, store, systemd, telemetry};

/// Errors the admin API reports.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("account {0} is not in the inventory")]
    UnknownAccount(String),
    #[error("account {0} is busy: a rotation or revocation is in progress")]
    Busy(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

impl From<RotationError> for ApiError {
    fn from(e: RotationError) -> Self {
        match e {
            RotationError::Busy(a) => ApiError::Busy(a),
            RotationError::UnknownAccount(a) => ApiError::UnknownAccount(a),
            other => ApiError::Failed(other.to_string()),
        }
    }
}

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error("metrics listener {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// The running daemon as the admin API sees it.
pub struct Service {
    config: PathBuf,
    current: RwLock<Arc<Context>>,
    control: mpsc::Sender<Control>,
    ready: AtomicBool,
    reload_lock: tokio::sync::Mutex<()>,
}

/// Builds the saga context for an inventory, reusing `ledger` if given.
pub async fn context(
    inventory: Inventory,
    clock: SharedClock,
    ledger: Option<Ledger>,
    take_over: bool,
) -> Result<Context, StartError> {
    let ledger = match ledger {
        Some(l) => l,
        None => Ledger::open(&inventory.state).await?,
    };
    let engines = engine::build(&inventory)?;
    let stores = store::build(&inventory);
    Ok(Context {
        inventory: Arc::new(inventory),
        engines,
        stores,
        ledger,
        clock,
        take_over: take_over.into(),
        crash_after: None,
    })
}

impl Service {
    /// The context in force now.
    pub fn ctx(&self) -> Arc<Context> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub async fn status(&self) -> Result<Vec<AccountStatus>, ApiError> {
        let ctx = self.ctx();
        crate::api::statuses(&ctx.inventory, &ctx.ledger, ctx.clock.now())
            .await
            .map_err(|e| ApiError::Failed(e.to_string()))
    }

    pub async fn account(&self, name: &str) -> Result<AccountDetail, ApiError> {
        let ctx = self.ctx();
        ctx.account(name)?;
        let status = self
            .status()
            .await?
            .into_iter()
            .find(|s| s.account == name)
            .ok_or_else(|| ApiError::UnknownAccount(name.to_owned()))?;
        let live = ctx
            .ledger
            .live(name)
            .await
            .map_err(|e| ApiError::Failed(e.to_string()))?;
        Ok(AccountDetail {
            status,
            live: live.iter().map(crate::api::credential_status).collect(),
        })
    }

    /// An operator's rotation. It runs in a task the scheduler owns: if the
    /// client goes away, the rotation still finishes (and is recorded).
    pub async fn rotate(&self, name: &str) -> Result<RotateResponse, ApiError> {
        let ctx = self.ctx();
        ctx.account(name)?;
        let (reply, result) = tokio::sync::oneshot::channel();
        self.control
            .send(Control::Rotate {
                account: name.to_owned(),
                reply,
            })
            .await
            .map_err(|_| ApiError::Failed("the scheduler is shutting down".into()))?;
        let r = result
            .await
            .map_err(|_| ApiError::Failed("the scheduler is shutting down".into()))??;
        Ok(RotateResponse {
            account: r.account,
            version: r.version,
            username: r.username,
            expires_at: crate::api::timestamp(r.expires_at),
        })
    }

    pub async fn revoke(
        &self,
        name: &str,
        previous_only: bool,
    ) -> Result<RevokeResponse, ApiError> {
        let ctx = self.ctx();
        ctx.account(name)?;
        let (reply, result) = tokio::sync::oneshot::channel();
        self.control
            .send(Control::Revoke {
                account: name.to_owned(),
                previous_only,
                reply,
            })
            .await
            .map_err(|_| ApiError::Failed("the scheduler is shutting down".into()))?;
        let revoked = result
            .await
            .map_err(|_| ApiError::Failed("the scheduler is shutting down".into()))??;
        Ok(RevokeResponse {
            account: name.to_owned(),
            revoked,
            suspended: !previous_only,
        })
    }

    pub async fn events(&self, since: i64) -> Result<Vec<EventEntry>, ApiError> {
        let ctx = self.ctx();
        let events = ctx
            .ledger
            .events(since, 1000)
            .await
            .map_err(|e| ApiError::Failed(e.to_string()))?;
        Ok(events
            .into_iter()
            .map(|e| EventEntry {
                id: e.id,
                at: crate::api::timestamp(e.at),
                account: e.account,
                version: e.version,
                kind: e.kind,
                detail: e.detail,
            })
            .collect())
    }

    /// Audits every database now (read-only), as `credrotd audit` does, with
    /// the login activity the daemon sampled.
    pub async fn audit(&self) -> crate::audit::Report {
        crate::audit::watch::run_once(&self.ctx()).await
    }

    /// Reload is start-up again: read and validate the file, build a fresh
    /// context, then swap it in. On any error the running inventory stays.
    pub async fn reload(&self) -> Result<ReloadResponse, ApiError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        systemd::reloading();
        let result = self.reload_inner().await;
        match &result {
            Ok(r) => {
                info!(accounts = r.accounts, added = ?r.added, removed = ?r.removed, "inventory reloaded");
                systemd::ready(&format!("reloaded: {} accounts", r.accounts));
            }
            Err(e) => {
                error!(error = %e, "reload failed; the running inventory stays in force");
                systemd::ready("reload failed; running inventory kept");
            }
        }
        result
    }

    async fn reload_inner(&self) -> Result<ReloadResponse, ApiError> {
        let checked =
            inventory::load(&self.config).map_err(|e| ApiError::Invalid(e.to_string()))?;
        let old = self.ctx();
        let new_inv = checked.inventory;
        if new_inv.state != old.inventory.state {
            return Err(ApiError::Invalid(format!(
                "state changed from {} to {}; the ledger cannot change on reload, restart credrotd",
                old.inventory.state, new_inv.state
            )));
        }
        for (what, changed) in [
            (
                "admin",
                format!("{:?}", new_inv.admin) != format!("{:?}", old.inventory.admin),
            ),
            (
                "metrics",
                format!("{:?}", new_inv.metrics) != format!("{:?}", old.inventory.metrics),
            ),
        ] {
            if changed {
                warn!("`{what}` changed; it takes effect at the next restart");
            }
        }
        let old_names: BTreeSet<String> = old.inventory.accounts.keys().cloned().collect();
        let new_names: BTreeSet<String> = new_inv.accounts.keys().cloned().collect();
        let added: Vec<String> = new_names.difference(&old_names).cloned().collect();
        let removed: Vec<String> = old_names.difference(&new_names).cloned().collect();
        let prune = new_inv.prune;
        let count = new_inv.accounts.len();
        let fresh = context(new_inv, old.clock.clone(), Some(old.ledger.clone()), false)
            .await
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
        let fresh = Arc::new(fresh);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        let _ = self.control.send(Control::Reload(fresh)).await;
        for name in &removed {
            telemetry::forget(name);
            if prune {
                // Revoke with the old inventory, which still knows the account.
                if let Some(account) = old.inventory.accounts.get(name) {
                    let r = old
                        .with_lease(name, Duration::from_secs(60), |lease| {
                            let old = &old;
                            async move { rotation::revoke(old, &lease, account, false).await }
                        })
                        .await;
                    match r {
                        Ok(v) => {
                            info!(account = %name, revoked = ?v, "pruned an account removed from the inventory")
                        }
                        Err(e) => {
                            warn!(account = %name, error = %e, "cannot prune removed account")
                        }
                    }
                }
            } else {
                info!(account = %name, "account removed from the inventory; its credentials are left alone (set `prune: true` to revoke them)");
            }
        }
        Ok(ReloadResponse {
            accounts: count,
            added,
            removed,
            warnings: checked.warnings.iter().map(|w| w.to_string()).collect(),
        })
    }
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(
    config: &Path,
    inventory: Inventory,
    clock: SharedClock,
    take_over: bool,
) -> Result<(), StartError> {
    let admin_cfg = inventory.admin.clone();
    let metrics_cfg = inventory.metrics.clone();
    let ctx = Arc::new(context(inventory, clock, None, take_over).await?);

    let (control_tx, control_rx) = mpsc::channel(64);
    let service = Arc::new(Service {
        config: config.to_owned(),
        current: RwLock::new(ctx.clone()),
        control: control_tx.clone(),
        ready: AtomicBool::new(false),
        reload_lock: tokio::sync::Mutex::new(()),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // Listeners first, so that READY=1 means they are bound.
    let admin_listener = match &admin_cfg {
        Some(a) => Some((admin::bind(&a.socket).await?, a.clone())),
        None => None,
    };
    let metrics_listener = match &metrics_cfg {
        Some(m) => Some(
            tokio::net::TcpListener::bind(m.listen)
                .await
                .map_err(|source| StartError::Metrics {
                    addr: m.listen,
                    source,
                })?,
        ),
        None => None,
    };

    let mut tasks: JoinSet<()> = JoinSet::new();
    if let Some((listener, cfg)) = admin_listener {
        info!(socket = %cfg.socket.display(), "admin socket listening");
        let allow = admin::Allow {
            uids: cfg.allow_uids.clone(),
            gids: cfg.allow_gids.clone(),
        };
        tasks.spawn(admin::serve(
            listener,
            cfg.socket.clone(),
            allow,
            service.clone(),
            stopped(stop_rx.clone()),
        ));
    }
    if let Some(listener) = metrics_listener {
        match listener.local_addr() {
            Ok(addr) => info!(listen = %addr, "metrics listening"),
            Err(_) => info!("metrics listening"),
        }
        tasks.spawn(serve_metrics(listener, stopped(stop_rx.clone())));
    }
    tasks.spawn(crate::audit::watch::watch(
        service.clone(),
        stopped(stop_rx.clone()),
    ));
    let sig = signals(service.clone(), control_tx.clone(), stop_tx.clone());
    tasks.spawn(async move {
        if let Err(e) = sig.await {
            error!(error = %e, "signal handling failed");
        }
    });
    if let Some(every) = systemd::watchdog_interval() {
        tasks.spawn(watchdog(
            every,
            control_tx.clone(),
            stopped(stop_rx.clone()),
        ));
    }

    telemetry::set_up(true);
    let ready_service = service.clone();
    let on_ready = move |accounts: usize| {
        ready_service.ready.store(true, Ordering::SeqCst);
        systemd::ready(&format!(
            "{accounts} accounts; start-up reconciliation done"
        ));
        info!("ready");
    };
    let result = scheduler::run_with(ctx, control_rx, stopped(stop_rx.clone()), on_ready).await;
    systemd::stopping();
    telemetry::set_up(false);
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    service.ctx().ledger.close().await;
    result.map_err(StartError::from)
}

/// Signals become control messages, once: SIGTERM/SIGINT stop, SIGHUP reloads,
/// SIGUSR1 rotates every account.
async fn signals(
    service: Arc<Service>,
    control: mpsc::Sender<Control>,
    stop: watch::Sender<bool>,
) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(StartError::Signals)?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(StartError::Signals)?;
    let mut stop_rx = stop.subscribe();
    let stopped = async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    let mut reloads = JoinSet::new();
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: finishing in-flight steps, then exiting"); let _ = stop.send(true); return Ok(()); }
            _ = int.recv() => { info!("SIGINT: finishing in-flight steps, then exiting"); let _ = stop.send(true); return Ok(()); }
            _ = &mut stopped => return Ok(()),
            _ = hup.recv() => {
                info!("SIGHUP: reloading the inventory");
                // In its own task, so that SIGTERM is still heard while a reload
                // (and a prune) runs. Errors are logged by reload itself.
                let service = service.clone();
                reloads.spawn(async move {
                    let _ = service.reload().await;
                });
            }
            Some(_) = reloads.join_next(), if !reloads.is_empty() => {}
            _ = usr1.recv() => {
                info!("SIGUSR1: rotating every account now");
                let _ = control.send(Control::RotateNow(Vec::new())).await;
            }
        }
    }
}

/// Pings systemd's watchdog only while the scheduler loop answers.
async fn watchdog(
    every: Duration,
    control: mpsc::Sender<Control>,
    stopped: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep(every) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if control.send(Control::Ping(tx)).await.is_err() {
                    return;
                }
                match tokio::time::timeout(every, rx).await {
                    Ok(Ok(())) => systemd::watchdog(),
                    _ => warn!("scheduler did not answer the watchdog probe"),
                }
            }
        }
    }
}

async fn serve_metrics(
    listener: tokio::net::TcpListener,
    stopped: impl std::future::Future<Output = ()>,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    tokio::pin!(stopped);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // EMFILE and friends: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                        let resp = if req.uri().path() == "/metrics" {
                            hyper::Response::builder()
                                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                                .body(Full::new(Bytes::from(telemetry::render())))
                        } else {
                            hyper::Response::builder().status(404).body(Full::new(Bytes::from_static(b"see /metrics\n")))
                        };
                        Ok::<_, std::convert::Infallible>(resp.unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new()))))
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                    let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
                });
            }
        }
    }
    conns.shutdown().await;
}
