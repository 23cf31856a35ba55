//! The ledger: credrotd's durable state, in SQLite through sqlx.
//!
//! It records each credential's state before the side effect that moves it on, an
//! append-only event log (never a secret), per-account scheduling state, and the
//! leases that keep two processes (the daemon and a CLI `rotate`) off one account.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

/// Errors talking to the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot open ledger {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot create ledger directory {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ledger migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("ledger query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// A guarded state change found the credential in another state: someone else
    /// moved it, or it was already moved.
    #[error("credential {account} v{version} is {actual}, expected {expected}")]
    StateConflict {
        account: String,
        version: i64,
        expected: CredState,
        actual: String,
    },
    #[error("ledger holds an unknown credential state {0:?}")]
    UnknownState(String),
}

/// A credential's place in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredState {
    /// Recorded; the login may or may not exist yet.
    Planned,
    /// The login exists (or its password was set) in the database.
    Created,
    /// A login with it succeeded.
    Verified,
    /// Every store of the account holds it.
    Published,
    /// What consumers should use.
    Current,
    /// Superseded; valid until its overlap ends (`retire_at`).
    Retiring,
    Revoked,
    /// Rolled back before it was ever current.
    Aborted,
}

impl CredState {
    pub const ALL: [CredState; 8] = [
        CredState::Planned,
        CredState::Created,
        CredState::Verified,
        CredState::Published,
        CredState::Current,
        CredState::Retiring,
        CredState::Revoked,
        CredState::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CredState::Planned => "planned",
            CredState::Created => "created",
            CredState::Verified => "verified",
            CredState::Published => "published",
            CredState::Current => "current",
            CredState::Retiring => "retiring",
            CredState::Revoked => "revoked",
            CredState::Aborted => "aborted",
        }
    }

    /// States a crash can leave behind that recovery must finish or roll back.
    pub fn is_middle(self) -> bool {
        matches!(
            self,
            CredState::Planned | CredState::Created | CredState::Verified | CredState::Published
        )
    }

    /// States in which the credential may still log in.
    pub fn is_live(self) -> bool {
        !matches!(self, CredState::Revoked | CredState::Aborted)
    }
}

impl std::fmt::Display for CredState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CredState {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CredState::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| LedgerError::UnknownState(s.to_owned()))
    }
}

/// One credential as the ledger knows it. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub id: i64,
    pub account: String,
    pub version: i64,
    pub database: String,
    pub strategy: String,
    pub username: String,
    pub state: CredState,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// When its overlap ends; set when it starts retiring.
    pub retire_at: Option<DateTime<Utc>>,
    /// Stores known to hold this version.
    pub stores: Vec<String>,
    pub updated_at: DateTime<Utc>,
}

/// Scheduling state of one account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountState {
    pub account: String,
    pub next_rotation_at: Option<DateTime<Utc>>,
    pub last_result: Option<String>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub failures: i64,
    pub retry_at: Option<DateTime<Utc>>,
    /// Set by a break-glass revoke: no new credential until an explicit rotate.
    pub suspended: bool,
}

/// An event from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub account: String,
    pub version: Option<i64>,
    pub kind: String,
    pub detail: String,
}

/// What to record when planning a credential.
#[derive(Debug, Clone)]
pub struct NewCredential<'a> {
    pub account: &'a str,
    pub database: &'a str,
    pub strategy: &'a str,
    pub username: &'a str,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> DateTime<Utc> {
    // Values come from `ms` above, so they are always in range.
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

/// The ledger handle. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ledger {
    pool: SqlitePool,
}

impl Ledger {
    /// Opens (creating if needed) the ledger at a `sqlite://` URL and migrates it.
    pub async fn open(url: &str) -> Result<Ledger, LedgerError> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|source| LedgerError::Open {
                url: url.to_owned(),
                source,
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        if let Some(dir) = opts.get_filename().parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|source| LedgerError::Dir {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|source| LedgerError::Open {
                url: url.to_owned(),
                source,
            })?;
        sqlx::migrate!("daemon/ledger/migrations")
            .run(&pool)
            .await?;
        Ok(Ledger { pool })
    }

    /// Records a new credential in state `planned`, with the next version number.
    pub async fn plan(
        &self,
        new: NewCredential<'_>,
        now: DateTime<Utc>,
    ) -> Result<Credential, LedgerError> {
        // One statement, so that the version is assigned under SQLite's write lock
        // (a read-then-write transaction could fail with SQLITE_BUSY instead of
        // waiting for a concurrent writer).
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO credentials (account, version, database, strategy, username, state, issued_at, expires_at, updated_at)
             SELECT ?1, COALESCE(MAX(version), 0) + 1, ?2, ?3, ?4, 'planned', ?5, ?6, ?7
             FROM credentials WHERE account = ?1 RETURNING id",
        )
        .bind(new.account)
        .bind(new.database)
        .bind(new.strategy)
        .bind(new.username)
        .bind(ms(new.issued_at))
        .bind(ms(new.expires_at))
        .bind(ms(now))
        .fetch_one(&self.pool)
        .await?;
        self.get(id).await
    }

    /// Reads one credential by id.
    pub async fn get(&self, id: i64) -> Result<Credential, LedgerError> {
        let row = sqlx::query("SELECT * FROM credentials WHERE id = ?1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        credential(&row)
    }

    /// Moves a credential from `from` to `to`; fails with `StateConflict` if it is
    /// no longer in `from`.
    pub async fn advance(
        &self,
        cred: &Credential,
        from: CredState,
        to: CredState,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.transition(cred, from, to, now, None).await
    }

    /// [`Ledger::advance`] and an event-log entry, in one transaction (one
    /// durable write instead of two). `detail` must never carry a secret.
    pub async fn advance_noting(
        &self,
        cred: &Credential,
        from: CredState,
        to: CredState,
        now: DateTime<Utc>,
        kind: &str,
        detail: &str,
    ) -> Result<(), LedgerError> {
        self.transition(cred, from, to, now, Some((kind, detail)))
            .await
    }

    async fn transition(
        &self,
        cred: &Credential,
        from: CredState,
        to: CredState,
        now: DateTime<Utc>,
        note: Option<(&str, &str)>,
    ) -> Result<(), LedgerError> {
        // The first statement writes, so the transaction takes SQLite's write
        // lock at once (and waits for it) instead of upgrading later.
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE credentials SET state = ?1, updated_at = ?2 WHERE id = ?3 AND state = ?4",
        )
        .bind(to.as_str())
        .bind(ms(now))
        .bind(cred.id)
        .bind(from.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            let actual = self.get(cred.id).await?.state;
            return Err(LedgerError::StateConflict {
                account: cred.account.clone(),
                version: cred.version,
                expected: from,
                actual: actual.to_string(),
            });
        }
        if let Some((kind, detail)) = note {
            sqlx::query(
                "INSERT INTO events (at, account, version, kind, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(ms(now))
            .bind(&cred.account)
            .bind(cred.version)
            .bind(kind)
            .bind(detail)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Promotes `new` (published) to current and moves the previous current, if
    /// any, to retiring until `retire_at`, in one transaction.
    pub async fn promote(
        &self,
        new: &Credential,
        previous: Option<&Credential>,
        retire_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.promote_noting(new, previous, retire_at, now, None)
            .await
    }

    /// [`Ledger::promote`] with an event-log entry (kind `current`) in the same
    /// transaction. `detail` must never carry a secret.
    pub async fn promote_noting(
        &self,
        new: &Credential,
        previous: Option<&Credential>,
        retire_at: DateTime<Utc>,
        now: DateTime<Utc>,
        detail: Option<&str>,
    ) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        if let Some(prev) = previous {
            let done = sqlx::query(
                "UPDATE credentials SET state = 'retiring', retire_at = ?1, updated_at = ?2 WHERE id = ?3 AND state = 'current'",
            )
            .bind(ms(retire_at))
            .bind(ms(now))
            .bind(prev.id)
            .execute(&mut *tx)
            .await?;
            // The predecessor must still be current: otherwise someone else moved
            // it and promoting would leave two current credentials.
            if done.rows_affected() != 1 {
                return Err(LedgerError::StateConflict {
                    account: prev.account.clone(),
                    version: prev.version,
                    expected: CredState::Current,
                    actual: "changed concurrently".into(),
                });
            }
        }
        let done = sqlx::query(
            "UPDATE credentials SET state = 'current', updated_at = ?1 WHERE id = ?2 AND state = 'published'",
        )
        .bind(ms(now))
        .bind(new.id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(LedgerError::StateConflict {
                account: new.account.clone(),
                version: new.version,
                expected: CredState::Published,
                actual: "changed concurrently".into(),
            });
        }
        if let Some(detail) = detail {
            sqlx::query(
                "INSERT INTO events (at, account, version, kind, detail) VALUES (?1, ?2, ?3, 'current', ?4)",
            )
            .bind(ms(now))
            .bind(&new.account)
            .bind(new.version)
            .bind(detail)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a credential's new expiry.
    pub async fn set_expires_at(
        &self,
        cred: &Credential,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        sqlx::query("UPDATE credentials SET expires_at = ?1, updated_at = ?2 WHERE id = ?3")
            .bind(ms(at))
            .bind(ms(now))
            .bind(cred.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records which stores hold a credential.
    pub async fn set_stores(
        &self,
        cred: &Credential,
        stores: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let json = serde_json::to_string(stores).unwrap_or_else(|_| "[]".into());
        sqlx::query("UPDATE credentials SET stores = ?1, updated_at = ?2 WHERE id = ?3")
            .bind(json)
            .bind(ms(now))
            .bind(cred.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every credential of an account, oldest first.
    pub async fn credentials(&self, account: &str) -> Result<Vec<Credential>, LedgerError> {
        let rows = sqlx::query("SELECT * FROM credentials WHERE account = ?1 ORDER BY version")
            .bind(account)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(credential).collect()
    }

    /// Credentials of an account that may still log in, oldest first.
    pub async fn live(&self, account: &str) -> Result<Vec<Credential>, LedgerError> {
        let rows = sqlx::query(
            "SELECT * FROM credentials WHERE account = ?1 AND state NOT IN ('revoked', 'aborted') ORDER BY version",
        )
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(credential).collect()
    }

    /// Every live credential of every account.
    pub async fn all_live(&self) -> Result<Vec<Credential>, LedgerError> {
        let rows = sqlx::query(
            "SELECT * FROM credentials WHERE state NOT IN ('revoked', 'aborted') ORDER BY account, version",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(credential).collect()
    }

    /// Appends to the event log. `detail` must never carry a secret.
    pub async fn event(
        &self,
        at: DateTime<Utc>,
        account: &str,
        version: Option<i64>,
        kind: &str,
        detail: &str,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO events (at, account, version, kind, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(ms(at))
        .bind(account)
        .bind(version)
        .bind(kind)
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Events with an id greater than `since`, oldest first.
    pub async fn events(&self, since: i64, limit: i64) -> Result<Vec<Event>, LedgerError> {
        let rows = sqlx::query("SELECT * FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")
            .bind(since)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| Event {
                id: r.get("id"),
                at: from_ms(r.get("at")),
                account: r.get("account"),
                version: r.get("version"),
                kind: r.get("kind"),
                detail: r.get("detail"),
            })
            .collect())
    }

    /// The scheduling state of an account (default if never seen).
    pub async fn account(&self, account: &str) -> Result<AccountState, LedgerError> {
        let row = sqlx::query("SELECT * FROM accounts WHERE account = ?1")
            .bind(account)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .as_ref()
            .map(account_state)
            .unwrap_or_else(|| AccountState {
                account: account.to_owned(),
                ..AccountState::default()
            }))
    }

    /// The scheduling state of every account the ledger has seen, in one query
    /// (the scheduler reads it at every wake-up).
    pub async fn accounts(&self) -> Result<BTreeMap<String, AccountState>, LedgerError> {
        let rows = sqlx::query("SELECT * FROM accounts")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(account_state)
            .map(|a| (a.account.clone(), a))
            .collect())
    }

    async fn ensure_account(&self, account: &str) -> Result<(), LedgerError> {
        sqlx::query("INSERT INTO accounts (account) VALUES (?1) ON CONFLICT(account) DO NOTHING")
            .bind(account)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a successful rotation and the next scheduled one.
    pub async fn record_success(
        &self,
        account: &str,
        now: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
    ) -> Result<(), LedgerError> {
        self.ensure_account(account).await?;
        sqlx::query(
            "UPDATE accounts SET last_result = 'ok', last_error = NULL, last_attempt_at = ?1, failures = 0,
             retry_at = NULL, suspended = 0, next_rotation_at = ?2 WHERE account = ?3",
        )
        .bind(ms(now))
        .bind(next.map(ms))
        .bind(account)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a failed rotation and when to retry. `error` must hold no secret.
    pub async fn record_failure(
        &self,
        account: &str,
        now: DateTime<Utc>,
        error: &str,
        retry_at: DateTime<Utc>,
    ) -> Result<i64, LedgerError> {
        self.ensure_account(account).await?;
        let failures: i64 = sqlx::query_scalar(
            "UPDATE accounts SET last_result = 'failed', last_error = ?1, last_attempt_at = ?2,
             failures = failures + 1, retry_at = ?3 WHERE account = ?4 RETURNING failures",
        )
        .bind(error)
        .bind(ms(now))
        .bind(ms(retry_at))
        .bind(account)
        .fetch_one(&self.pool)
        .await?;
        Ok(failures)
    }

    /// Suspends an account after a break-glass revoke (or lifts the suspension).
    pub async fn set_suspended(&self, account: &str, suspended: bool) -> Result<(), LedgerError> {
        self.ensure_account(account).await?;
        sqlx::query("UPDATE accounts SET suspended = ?1 WHERE account = ?2")
            .bind(suspended as i64)
            .bind(account)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A fresh lease holder id for one saga: `host:pid:nonce`. Every call gets its
    /// own, so two sagas in one process exclude each other like two processes do.
    pub fn new_holder(&self) -> String {
        holder_id()
    }

    /// Takes (or, for the same holder, extends) the account's lease for `ttl`.
    /// Returns false if another live holder has it. A lease whose holder process
    /// on this host is gone is taken over.
    pub async fn acquire(
        &self,
        account: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, LedgerError> {
        let until = now + crate::schedule::to_chrono(ttl);
        let done = sqlx::query(
            "INSERT INTO leases (account, holder, expires_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(account) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
             WHERE leases.holder = excluded.holder OR leases.expires_at < ?4",
        )
        .bind(account)
        .bind(holder)
        .bind(ms(until))
        .bind(ms(now))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(true);
        }
        let other: Option<String> =
            sqlx::query_scalar("SELECT holder FROM leases WHERE account = ?1")
                .bind(account)
                .fetch_optional(&self.pool)
                .await?;
        match other {
            Some(other) if holder_is_dead(&other) => {
                let done = sqlx::query(
                    "UPDATE leases SET holder = ?1, expires_at = ?2 WHERE account = ?3 AND holder = ?4",
                )
                .bind(holder)
                .bind(ms(until))
                .bind(account)
                .bind(&other)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }
            _ => Ok(false),
        }
    }

    /// Gives the lease back.
    pub async fn release(&self, account: &str, holder: &str) -> Result<(), LedgerError> {
        sqlx::query("DELETE FROM leases WHERE account = ?1 AND holder = ?2")
            .bind(account)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Raw access for tests that inspect the file (e.g. for leaked secrets).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn account_state(r: &sqlx::sqlite::SqliteRow) -> AccountState {
    AccountState {
        account: r.get("account"),
        next_rotation_at: r.get::<Option<i64>, _>("next_rotation_at").map(from_ms),
        last_result: r.get("last_result"),
        last_error: r.get("last_error"),
        last_attempt_at: r.get::<Option<i64>, _>("last_attempt_at").map(from_ms),
        failures: r.get("failures"),
        retry_at: r.get::<Option<i64>, _>("retry_at").map(from_ms),
        suspended: r.get::<i64, _>("suspended") != 0,
    }
}

fn credential(r: &sqlx::sqlite::SqliteRow) -> Result<Credential, LedgerError> {
    let stores: String = r.get("stores");
    Ok(Credential {
        id: r.get("id"),
        account: r.get("account"),
        version: r.get("version"),
        database: r.get("database"),
        strategy: r.get("strategy"),
        username: r.get("username"),
        state: r.get::<String, _>("state").parse()?,
        issued_at: from_ms(r.get("issued_at")),
        expires_at: from_ms(r.get("expires_at")),
        retire_at: r.get::<Option<i64>, _>("retire_at").map(from_ms),
        stores: serde_json::from_str(&stores).unwrap_or_default(),
        updated_at: from_ms(r.get("updated_at")),
    })
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

fn holder_id() -> String {
    let nonce: u64 = rand::random();
    format!("{}:{}:{nonce:016x}", hostname(), std::process::id())
}

/// True when `holder` names a process on this host that no longer exists.
fn holder_is_dead(holder: &str) -> bool {
    let mut parts = holder.rsplitn(3, ':');
    let (_nonce, pid, host) = (parts.next(), parts.next(), parts.next());
    let (Some(pid), Some(host)) = (pid.and_then(|p| p.parse::<i32>().ok()), host) else {
        return false;
    };
    if host != hostname() {
        return false;
    }
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        (dir, Ledger::open(&url).await.unwrap())
    }

    fn new<'a>(account: &'a str, username: &'a str) -> NewCredential<'a> {
        let now = Utc::now();
        NewCredential {
            account,
            database: "db",
            strategy: "ephemeral",
            username,
            issued_at: now,
            expires_at: now + chrono::Duration::hours(1),
        }
    }

    #[tokio::test]
    async fn versions_increase_per_account_and_transitions_are_guarded() {
        let (_d, l) = ledger().await;
        let now = Utc::now();
        let a1 = l.plan(new("a", "a_1"), now).await.unwrap();
        let a2 = l.plan(new("a", "a_2"), now).await.unwrap();
        let b1 = l.plan(new("b", "b_1"), now).await.unwrap();
        assert_eq!((a1.version, a2.version, b1.version), (1, 2, 1));
        l.advance(&a1, CredState::Planned, CredState::Created, now)
            .await
            .unwrap();
        let err = l
            .advance(&a1, CredState::Planned, CredState::Created, now)
            .await
            .unwrap_err();
        assert!(matches!(err, LedgerError::StateConflict { .. }), "{err}");
        assert_eq!(l.get(a1.id).await.unwrap().state, CredState::Created);
    }

    #[tokio::test]
    async fn promote_retires_previous_in_one_step() {
        let (_d, l) = ledger().await;
        let now = Utc::now();
        let a1 = l.plan(new("a", "a_1"), now).await.unwrap();
        for (f, t) in [
            (CredState::Planned, CredState::Created),
            (CredState::Created, CredState::Verified),
            (CredState::Verified, CredState::Published),
        ] {
            l.advance(&a1, f, t, now).await.unwrap();
        }
        l.promote(&a1, None, now, now).await.unwrap();
        let a2 = l.plan(new("a", "a_2"), now).await.unwrap();
        for (f, t) in [
            (CredState::Planned, CredState::Created),
            (CredState::Created, CredState::Verified),
            (CredState::Verified, CredState::Published),
        ] {
            l.advance(&a2, f, t, now).await.unwrap();
        }
        let until = now + chrono::Duration::minutes(5);
        l.promote(&a2, Some(&a1), until, now).await.unwrap();
        let a1 = l.get(a1.id).await.unwrap();
        assert_eq!(a1.state, CredState::Retiring);
        assert_eq!(
            a1.retire_at.unwrap().timestamp_millis(),
            until.timestamp_millis()
        );
        assert_eq!(l.get(a2.id).await.unwrap().state, CredState::Current);
    }

    #[tokio::test]
    async fn leases_exclude_other_holders_until_expiry() {
        let (dir, l1) = ledger().await;
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        let l2 = Ledger::open(&url).await.unwrap();
        let (h1, h2, h3) = (l1.new_holder(), l2.new_holder(), l1.new_holder());
        let ttl = Duration::from_secs(60);
        let now = Utc::now();
        assert!(l1.acquire("a", &h1, ttl, now).await.unwrap());
        assert!(
            l1.acquire("a", &h1, ttl, now).await.unwrap(),
            "the same holder extends its lease"
        );
        assert!(
            !l2.acquire("a", &h2, ttl, now).await.unwrap(),
            "another process is refused"
        );
        assert!(
            !l1.acquire("a", &h3, ttl, now).await.unwrap(),
            "another saga in the same process is refused"
        );
        assert!(l2.acquire("b", &h2, ttl, now).await.unwrap());
        let later = now + chrono::Duration::seconds(61);
        assert!(
            l2.acquire("a", &h2, ttl, later).await.unwrap(),
            "expired lease is taken over"
        );
        l2.release("a", &h2).await.unwrap();
        assert!(l1.acquire("a", &h1, ttl, later).await.unwrap());
    }

    #[tokio::test]
    async fn lease_of_a_dead_local_process_is_taken_over() {
        let (_d, l) = ledger().await;
        let now = Utc::now();
        // A pid far above pid_max never exists.
        let dead = format!("{}:{}:{:016x}", hostname(), 99_999_999, 1u64);
        sqlx::query("INSERT INTO leases (account, holder, expires_at) VALUES ('a', ?1, ?2)")
            .bind(&dead)
            .bind(ms(now + chrono::Duration::hours(1)))
            .execute(l.pool())
            .await
            .unwrap();
        assert!(l
            .acquire("a", &l.new_holder(), Duration::from_secs(60), now)
            .await
            .unwrap());
    }
}
