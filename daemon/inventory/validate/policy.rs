//! The environment policy: which environment the inventory is for, and the
//! credential-lifetime rules production enforces (a credential valid at most 7
//! days, an overlap shorter than the schedule's interval, no silent overlap for
//! a static account on a server with one password per user). Each rule is an
//! error in production and a warning elsewhere ([`Validator::policy`]).

use std::time::Duration;

use chrono::Utc;
use chrono_tz::Tz;
use serde_saphyr::Location;

use super::super::raw::{RawAccount, S};
use super::super::{EngineKind, Environment, Strategy, PRODUCTION_MAX_LIFETIME};
use super::{Defaults, Validator};
use crate::schedule::Schedule;

/// An account's schedule and the durations derived from it; `None` where the
/// value was invalid (and reported).
pub(super) struct Lifetimes {
    pub(super) schedule: Option<Schedule>,
    /// Zero when the written overlap was invalid, or for a static account
    /// without a second password.
    pub(super) overlap: Duration,
    pub(super) expiry_margin: Option<Duration>,
    pub(super) lifetime: Option<Option<Duration>>,
    pub(super) max_lifetime: Option<Duration>,
}

impl Validator {
    /// The `environment:` key; production when it is missing or unknown.
    pub(super) fn read_environment(
        &mut self,
        environment: &Option<S<String>>,
        top: Location,
    ) -> Environment {
        match environment.as_ref().map(|e| e.value.as_str()) {
            None | Some("production") => Environment::Production,
            Some("staging") => Environment::Staging,
            Some("development") => Environment::Development,
            Some(other) => {
                let at = environment.as_ref().map(|e| e.referenced).unwrap_or(top);
                self.error(
                    &at,
                    format!("unknown environment {other:?}; expected production, staging or development"),
                );
                Environment::Production
            }
        }
    }

    /// Schedule, overlap, expiry margin and lifetimes of account `n` (at `at`),
    /// checked against each other and against the policy.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lifetimes(
        &mut self,
        n: &str,
        at: Location,
        acc: &RawAccount,
        defaults: &Defaults,
        strategy: &Option<Strategy>,
        engine: EngineKind,
        tz: Tz,
    ) -> Lifetimes {
        let schedule = match acc.schedule.as_ref().or(defaults.schedule.as_ref()) {
            None => {
                self.error(
                    &at,
                    format!("account {n:?}: no schedule (set `schedule` here or in `defaults`)"),
                );
                None
            }
            Some(s) => match Schedule::parse(&s.value, tz) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.error(&s.referenced, format!("account {n:?}: invalid cron expression {:?}: {e}; expected e.g. \"0 0 */6 * * *\" (with a seconds field)", s.value));
                    None
                }
            },
        };
        let overlap_src = acc.overlap.as_ref().or(defaults.overlap.as_ref());
        let overlap = match overlap_src {
            Some(o) => self.duration(o, "overlap"),
            None => Some(Duration::from_secs(3600)),
        };
        let expiry_margin = match acc
            .expiry_margin
            .as_ref()
            .or(defaults.expiry_margin.as_ref())
        {
            Some(m) => self.duration(m, "expiry_margin"),
            None => Some(Duration::from_secs(3600)),
        };
        let lifetime = match &acc.lifetime {
            Some(l) => self.duration(l, "lifetime").map(Some),
            None => Some(None),
        };
        let max_lifetime_src = acc.max_lifetime.as_ref().or(defaults.max_lifetime.as_ref());
        let max_lifetime = match max_lifetime_src {
            Some(m) => self.duration(m, "max_lifetime"),
            None => Some(PRODUCTION_MAX_LIFETIME),
        };
        if let (Some(m), Some(src)) = (max_lifetime, max_lifetime_src) {
            if m > PRODUCTION_MAX_LIFETIME {
                self.policy(
                    &src.referenced,
                    format!(
                        "account {n:?}: max_lifetime {} exceeds 7 days",
                        humantime::format_duration(m)
                    ),
                );
            }
        }
        // A bad overlap is already reported; go on with zero to find other errors
        // (the account is not built when any error was found).
        let overlap_valid = overlap.is_some();
        let mut overlap = overlap.unwrap_or(Duration::ZERO);
        // MySQL 8 keeps the old password beside the new one (RETAIN CURRENT
        // PASSWORD) for a real overlap; PostgreSQL and MariaDB have one password.
        if matches!(strategy, Some(Strategy::Static { .. })) && engine != EngineKind::Mysql {
            let written_zero = acc.overlap.as_ref().is_some_and(|_| overlap.is_zero());
            if !written_zero {
                let server = if engine == EngineKind::Mariadb {
                    "MariaDB"
                } else {
                    "PostgreSQL"
                };
                self.policy(
                    overlap_src.map(|o| &o.referenced).unwrap_or(&at),
                    format!("account {n:?}: strategy static has no overlap on {server} (the old password stops working at once); write `overlap: 0` to acknowledge it"),
                );
            }
            overlap = Duration::ZERO;
        }
        if let (Some(schedule), Some(margin), Some(lifetime), true) =
            (&schedule, expiry_margin, lifetime, overlap_valid)
        {
            let now = Utc::now();
            let sched_at = acc
                .schedule
                .as_ref()
                .or(defaults.schedule.as_ref())
                .map(|s| s.referenced)
                .unwrap_or(at);
            let max = schedule.max_interval(now, 64);
            let min = min_interval(schedule, now, 64);
            if let Some(min) = min {
                if overlap >= min && !overlap.is_zero() {
                    self.error(
                        overlap_src.map(|o| &o.referenced).unwrap_or(&sched_at),
                        format!(
                            "account {n:?}: overlap {} is not shorter than the schedule's shortest interval {}; at most two credentials may be valid at once",
                            humantime::format_duration(overlap),
                            humantime::format_duration(min)
                        ),
                    );
                }
            }
            if let Some(max) = max {
                let needed = max + overlap;
                let effective = lifetime.unwrap_or(max + overlap + margin);
                if let (Some(l), Some(lsrc)) = (lifetime, &acc.lifetime) {
                    if l < needed {
                        self.error(
                            &lsrc.referenced,
                            format!(
                                "account {n:?}: lifetime {} cannot cover the schedule interval plus the overlap ({})",
                                humantime::format_duration(l),
                                humantime::format_duration(needed)
                            ),
                        );
                    }
                }
                if effective > PRODUCTION_MAX_LIFETIME {
                    let lat = acc
                        .lifetime
                        .as_ref()
                        .map(|l| l.referenced)
                        .unwrap_or(sched_at);
                    self.policy(
                        &lat,
                        format!(
                            "account {n:?}: credential lifetime {} exceeds 7 days",
                            humantime::format_duration(effective)
                        ),
                    );
                }
            }
        }
        Lifetimes {
            schedule,
            overlap,
            expiry_margin,
            lifetime,
            max_lifetime,
        }
    }
}

pub(super) fn min_interval(
    schedule: &Schedule,
    from: chrono::DateTime<Utc>,
    samples: usize,
) -> Option<Duration> {
    let mut prev = schedule.next_after(from)?;
    let mut min: Option<Duration> = None;
    for _ in 0..samples {
        let next = schedule.next_after(prev)?;
        let gap = (next - prev).to_std().ok()?;
        min = Some(min.map_or(gap, |m| m.min(gap)));
        prev = next;
    }
    min
}
