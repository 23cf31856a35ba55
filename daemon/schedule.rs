//! Pure time arithmetic: the next cron fire, a credential's expiry and the end of
//! its overlap are functions of `(now, schedule, policy)`. No IO and no clock here.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// A parsed cron expression (with a seconds field) evaluated in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    cron: cron::Schedule,
    tz: Tz,
}

impl Schedule {
    /// Parses a cron expression in the `cron` crate's format.
    pub fn parse(expr: &str, tz: Tz) -> Result<Self, String> {
        let fields = expr.split_whitespace().count();
        if !(6..=7).contains(&fields) {
            return Err(format!(
                "expected 6 or 7 fields (sec min hour day-of-month month day-of-week [year]), found {fields}"
            ));
        }
        let cron = cron::Schedule::from_str(expr).map_err(|e| {
            // The cron crate echoes the expression and a caret line; keep the
            // explanation on one line.
            let text = e.to_string();
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && *l != expr.trim() && !l.chars().all(|c| c == '^'))
                .collect();
            lines.join(" ")
        })?;
        if cron.upcoming(tz).next().is_none() {
            return Err("the expression never fires again".into());
        }
        Ok(Schedule {
            expr: expr.to_owned(),
            cron,
            tz,
        })
    }

    /// The expression as written.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The time zone the expression is evaluated in.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The first fire strictly after `now`, or `None` if the schedule has ended.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .after(&now.with_timezone(&self.tz))
            .next()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The longest gap between consecutive fires over the next `samples` fires
    /// after `from`. Used to check that a lifetime covers the interval.
    pub fn max_interval(&self, from: DateTime<Utc>, samples: usize) -> Option<Duration> {
        let fires: Vec<_> = self
            .cron
            .after(&from.with_timezone(&self.tz))
            .take(samples.max(2))
            .collect();
        fires
            .windows(2)
            .filter_map(|w| (w[1] - w[0]).to_std().ok())
            .max()
    }
}

/// When a credential issued at `issued_at` must stop working on its own: the next
/// scheduled rotation plus the overlap plus a safety margin, or a fixed lifetime if
/// one is configured. The database enforces it (`VALID UNTIL`), so a credential dies
/// even if credrotd stops.
pub fn expiry(
    issued_at: DateTime<Utc>,
    schedule: &Schedule,
    overlap: Duration,
    margin: Duration,
    lifetime: Option<Duration>,
) -> DateTime<Utc> {
    if let Some(lifetime) = lifetime {
        return issued_at + to_chrono(lifetime);
    }
    let next = schedule
        .next_after(issued_at)
        .unwrap_or(issued_at + chrono::Duration::days(7));
    next + to_chrono(overlap) + to_chrono(margin)
}

/// Delay before retry number `attempt` (1-based) of a failed rotation: exponential
/// from `base`, capped at `cap`.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1).min(20))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(cap)
}

/// Converts a std duration to chrono, saturating at chrono's maximum.
pub fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, h, m, s).unwrap()
    }

    #[test]
    fn next_fire_is_strictly_after_now() {
        let s = Schedule::parse("0 0 */6 * * *", chrono_tz::UTC).unwrap();
        assert_eq!(s.next_after(t(0, 0, 0)), Some(t(6, 0, 0)));
        assert_eq!(s.next_after(t(5, 59, 59)), Some(t(6, 0, 0)));
    }

    #[test]
    fn schedule_respects_time_zone() {
        let s = Schedule::parse("0 0 3 * * *", chrono_tz::Europe::Paris).unwrap();
        // 03:00 in Paris on 1 March (UTC+1) is 02:00 UTC.
        assert_eq!(s.next_after(t(0, 0, 0)), Some(t(2, 0, 0)));
    }

    #[test]
    fn rejects_five_field_cron() {
        let err = Schedule::parse("0 3 * * *", chrono_tz::UTC).unwrap_err();
        assert!(err.contains("6 or 7 fields"), "{err}");
    }

    #[test]
    fn expiry_covers_next_fire_overlap_and_margin() {
        let s = Schedule::parse("0 0 */6 * * *", chrono_tz::UTC).unwrap();
        let e = expiry(
            t(1, 0, 0),
            &s,
            Duration::from_secs(1800),
            Duration::from_secs(600),
            None,
        );
        assert_eq!(e, t(6, 40, 0));
        let fixed = expiry(
            t(1, 0, 0),
            &s,
            Duration::ZERO,
            Duration::ZERO,
            Some(Duration::from_secs(3600)),
        );
        assert_eq!(fixed, t(2, 0, 0));
    }

    #[test]
    fn max_interval_of_six_hourly_is_six_hours() {
        let s = Schedule::parse("0 0 */6 * * *", chrono_tz::UTC).unwrap();
        assert_eq!(
            s.max_interval(t(0, 0, 0), 10),
            Some(Duration::from_secs(6 * 3600))
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Duration::from_secs(5);
        let cap = Duration::from_secs(60);
        assert_eq!(backoff(1, b, cap), Duration::from_secs(5));
        assert_eq!(backoff(2, b, cap), Duration::from_secs(10));
        assert_eq!(backoff(4, b, cap), Duration::from_secs(40));
        assert_eq!(backoff(5, b, cap), cap);
        assert_eq!(backoff(100, b, cap), cap);
    }
}
