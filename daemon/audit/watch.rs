//! The daemon's side of the audit: it samples who is connected to each
//! database (what `stale` findings are made of) and audits on the inventory's
//! `audit.schedule`, exporting the findings as metrics.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::{collect, Report, Severity};
use crate::rotation::Context;
use crate::service::Service;
use crate::telemetry;

/// Audits every database now against the context's inventory and ledger, and
/// updates the metrics. Read-only.
pub async fn run_once(ctx: &Context) -> Report {
    let activity = match ctx.ledger.activity().await {
        Ok(a) => Some(a),
        Err(e) => {
            warn!(error = %e, "cannot read login activity from the ledger");
            None
        }
    };
    let report = collect(
        &ctx.inventory,
        &ctx.engines,
        Some(&ctx.ledger),
        activity.as_ref(),
        None,
        ctx.inventory.audit.stale_after,
        &crate::progress::Progress::hidden(),
    )
    .await;
    telemetry::audit(&report, ctx.clock.now().timestamp());
    report
}

/// One sample of each database's sessions into the ledger. A database that
/// does not answer is skipped (its window keeps its start: a gap in sampling
/// can only make a login look unused for longer than it was, which is why
/// `stale_after` should be days, not minutes).
pub async fn sample(ctx: &Context) {
    let now = ctx.clock.now();
    for (name, engine) in &ctx.engines {
        match engine.sessions().await {
            Ok(roles) => {
                if let Err(e) = ctx.ledger.record_activity(name, &roles, now).await {
                    warn!(database = %name, error = %e, "cannot record login activity");
                }
            }
            Err(e) => warn!(database = %name, error = %e, "cannot sample sessions"),
        }
    }
}

/// Samples sessions every `audit.sample_every` and audits on
/// `audit.schedule`, until `stopped`. Follows reloads: each turn reads the
/// context in force.
pub async fn watch(service: Arc<Service>, stopped: impl Future<Output = ()>) {
    tokio::pin!(stopped);
    let mut next_sample: Option<DateTime<Utc>> = None;
    let mut next_audit: Option<DateTime<Utc>> = None;
    let mut schedule_expr: Option<String> = None;
    loop {
        let ctx = service.ctx();
        let cfg = &ctx.inventory.audit;
        let now = ctx.clock.now();
        if next_sample.is_none_or(|t| t <= now) {
            sample(&ctx).await;
            next_sample = Some(now + crate::schedule::to_chrono(cfg.sample_every));
        }
        let expr = cfg.schedule.as_ref().map(|s| s.expr().to_owned());
        if expr != schedule_expr {
            // A reload changed (or set, or removed) the schedule.
            next_audit = cfg.schedule.as_ref().and_then(|s| s.next_after(now));
            schedule_expr = expr;
        }
        if next_audit.is_some_and(|t| t <= now) {
            let report = run_once(&ctx).await;
            let problems = report
                .findings
                .iter()
                .filter(|f| f.severity >= Severity::Warning)
                .count();
            info!(
                findings = report.findings.len(),
                warnings_or_errors = problems,
                failed_databases = report.errors.len(),
                "audit done (credrotd ctl audit shows the findings)"
            );
            next_audit = cfg
                .schedule
                .as_ref()
                .and_then(|s| s.next_after(ctx.clock.now()));
        }
        let wake = [next_sample, next_audit].into_iter().flatten().min();
        let wait = wake
            .map(|t| (t - ctx.clock.now()).to_std().unwrap_or_default())
            .unwrap_or(std::time::Duration::from_secs(60))
            // A reload may bring a nearer schedule: look again at least every minute.
            .min(std::time::Duration::from_secs(60));
        drop(ctx);
        tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
