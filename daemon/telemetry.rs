//! Metrics: every Prometheus metric credrotd exports is defined and updated here,
//! with Prometheus naming and bounded labels (account, store and database names
//! come from the inventory; results are `ok` / `failed`). The registry is global
//! because metrics are a process-wide concern; `render` produces the text format.

use std::sync::LazyLock;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountResult {
    account: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabel {
    account: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabel {
    store: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabel {
    kind: &'static str,
    severity: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatabaseLabel {
    database: String,
}

struct Metrics {
    registry: Registry,
    rotations: Family<AccountResult, Counter>,
    duration: Histogram,
    expiry: Family<AccountLabel, Gauge>,
    next_rotation: Family<AccountLabel, Gauge>,
    revocations: Family<AccountResult, Counter>,
    store_errors: Family<StoreLabel, Counter>,
    database_errors: Family<DatabaseLabel, Counter>,
    notify_failures: Family<AccountLabel, Counter>,
    stuck: Family<AccountLabel, Gauge>,
    extended: Family<AccountLabel, Gauge>,
    foreign: Family<AccountLabel, Gauge>,
    findings: Family<FindingLabel, Gauge>,
    audit_last_run: Gauge,
    audit_failed: Gauge,
    up: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let m = Metrics {
        registry: Registry::default(),
        rotations: Family::default(),
        // 50 ms to ~100 s.
        duration: Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 100.0]),
        expiry: Family::default(),
        next_rotation: Family::default(),
        revocations: Family::default(),
        store_errors: Family::default(),
        database_errors: Family::default(),
        notify_failures: Family::default(),
        stuck: Family::default(),
        extended: Family::default(),
        foreign: Family::default(),
        findings: Family::default(),
        audit_last_run: Gauge::default(),
        audit_failed: Gauge::default(),
        up: Gauge::default(),
    };
    registry.register(
        "credrotd_rotations",
        "Rotations by account and result",
        m.rotations.clone(),
    );
    registry.register_with_unit(
        "credrotd_rotation_duration",
        "Time one rotation took, from reconcile to promotion",
        Unit::Seconds,
        m.duration.clone(),
    );
    registry.register_with_unit(
        "credrotd_credential_expiry_timestamp",
        "When each account's current credential expires (Unix time)",
        Unit::Seconds,
        m.expiry.clone(),
    );
    registry.register_with_unit(
        "credrotd_next_rotation_timestamp",
        "When each account rotates next (Unix time)",
        Unit::Seconds,
        m.next_rotation.clone(),
    );
    registry.register(
        "credrotd_revocations",
        "Revocations by account and result",
        m.revocations.clone(),
    );
    registry.register(
        "credrotd_store_errors",
        "Errors from secret stores",
        m.store_errors.clone(),
    );
    registry.register(
        "credrotd_database_errors",
        "Errors from target databases",
        m.database_errors.clone(),
    );
    registry.register(
        "credrotd_notify_failures",
        "Consumer notifications (exec or signal) that failed",
        m.notify_failures.clone(),
    );
    registry.register(
        "credrotd_stuck_items",
        "Housekeeping items of each account that failed and are being retried (logins that cannot be dropped, grants that cannot be revoked)",
        m.stuck.clone(),
    );
    registry.register_with_unit(
        "credrotd_credential_extended_until_timestamp",
        "Set while rotations fail and the expiry guard has extended the current credential: until when (Unix time)",
        Unit::Seconds,
        m.extended.clone(),
    );
    registry.register(
        "credrotd_account_foreign",
        "1 when another ledger owns the account and credrotd refuses to manage it",
        m.foreign.clone(),
    );
    registry.register(
        "credrotd_audit_findings",
        "Findings of the last audit by kind and severity (credrotd audit)",
        m.findings.clone(),
    );
    registry.register_with_unit(
        "credrotd_audit_last_run_timestamp",
        "When the last audit finished (Unix time)",
        Unit::Seconds,
        m.audit_last_run.clone(),
    );
    registry.register(
        "credrotd_audit_failed_databases",
        "Databases the last audit could not read",
        m.audit_failed.clone(),
    );
    registry.register("credrotd_up", "1 while the daemon runs", m.up.clone());
    Metrics { registry, ..m }
});

fn result(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "failed"
    }
}

/// A rotation finished.
pub fn rotation(account: &str, ok: bool, seconds: f64) {
    METRICS
        .rotations
        .get_or_create(&AccountResult {
            account: account.to_owned(),
            result: result(ok),
        })
        .inc();
    if ok {
        METRICS.duration.observe(seconds);
    }
}

/// A revocation finished.
pub fn revocation(account: &str, ok: bool) {
    METRICS
        .revocations
        .get_or_create(&AccountResult {
            account: account.to_owned(),
            result: result(ok),
        })
        .inc();
}

/// The account's current credential and next rotation, as Unix seconds.
pub fn schedule(account: &str, expires_at: Option<i64>, next_rotation: Option<i64>) {
    let label = AccountLabel {
        account: account.to_owned(),
    };
    match expires_at {
        Some(t) => {
            METRICS.expiry.get_or_create(&label).set(t);
        }
        None => {
            METRICS.expiry.remove(&label);
        }
    }
    match next_rotation {
        Some(t) => {
            METRICS.next_rotation.get_or_create(&label).set(t);
        }
        None => {
            METRICS.next_rotation.remove(&label);
        }
    }
}

/// An account's housekeeping state: stuck items, the expiry guard's extension
/// (Unix seconds) and whether another ledger owns it.
pub fn housekeeping(account: &str, stuck: usize, extended_until: Option<i64>, foreign: bool) {
    let label = AccountLabel {
        account: account.to_owned(),
    };
    METRICS.stuck.get_or_create(&label).set(stuck as i64);
    match extended_until {
        Some(t) => {
            METRICS.extended.get_or_create(&label).set(t);
        }
        None => {
            METRICS.extended.remove(&label);
        }
    }
    METRICS.foreign.get_or_create(&label).set(foreign as i64);
}

/// The expiry guard just extended the account's current credential.
pub fn extended(account: &str, until: i64) {
    let label = AccountLabel {
        account: account.to_owned(),
    };
    METRICS.extended.get_or_create(&label).set(until);
    METRICS.expiry.get_or_create(&label).set(until);
}

/// Drops the per-account series of an account no longer in the inventory.
pub fn forget(account: &str) {
    schedule(account, None, None);
    let label = AccountLabel {
        account: account.to_owned(),
    };
    METRICS.stuck.remove(&label);
    METRICS.extended.remove(&label);
    METRICS.foreign.remove(&label);
}

pub fn store_error(store: &str) {
    METRICS
        .store_errors
        .get_or_create(&StoreLabel {
            store: store.to_owned(),
        })
        .inc();
}

pub fn database_error(database: &str) {
    METRICS
        .database_errors
        .get_or_create(&DatabaseLabel {
            database: database.to_owned(),
        })
        .inc();
}

pub fn notify_failed(account: &str) {
    METRICS
        .notify_failures
        .get_or_create(&AccountLabel {
            account: account.to_owned(),
        })
        .inc();
}

/// An audit finished at `at` (Unix seconds).
pub fn audit(report: &crate::audit::Report, at: i64) {
    for ((kind, severity), n) in report.counts() {
        METRICS
            .findings
            .get_or_create(&FindingLabel {
                kind: kind.as_str(),
                severity: severity.as_str(),
            })
            .set(n as i64);
    }
    METRICS.audit_failed.set(report.errors.len() as i64);
    METRICS.audit_last_run.set(at);
}

pub fn set_up(up: bool) {
    METRICS.up.set(up as i64);
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &METRICS.registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_names_with_units_and_totals() {
        rotation("unit_test_acc", true, 0.2);
        rotation("unit_test_acc", false, 0.0);
        schedule("unit_test_acc", Some(1_800_000_000), Some(1_700_000_000));
        store_error("unit_test_store");
        let text = render();
        for needle in [
            "credrotd_rotations_total{account=\"unit_test_acc\",result=\"ok\"} 1",
            "credrotd_rotations_total{account=\"unit_test_acc\",result=\"failed\"} 1",
            "credrotd_rotation_duration_seconds_bucket",
            "credrotd_credential_expiry_timestamp_seconds{account=\"unit_test_acc\"} 1800000000",
            "credrotd_next_rotation_timestamp_seconds{account=\"unit_test_acc\"} 1700000000",
            "credrotd_store_errors_total{store=\"unit_test_store\"} 1",
            "credrotd_up",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        forget("unit_test_acc");
        assert!(!render()
            .contains("credrotd_credential_expiry_timestamp_seconds{account=\"unit_test_acc\"}"));
    }
}
