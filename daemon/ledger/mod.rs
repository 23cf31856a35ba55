//! The ledger: credrotd's durable state, in SQLite through sqlx.
//!
//! It records each credential's state before the side effect that moves it on, an
//! append-only event log (never a secret), per-account scheduling state, and the
//! leases that keep two processes (the daemon and a CLI `rotate`) off one account.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

mod sync;
use sync::GroupSync;

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
    /// The saga's lease was taken over (it paused past its expiry): its writes are
    /// refused so that it cannot undo its successor's work.
    #[error("lost the lease of account {account} (fencing token {token} is stale); another saga owns it now")]
    Fenced { account: String, token: i64 },
    #[error("cannot flush the ledger to disk: {0}")]
    Sync(#[source] std::io::Error),
    #[error("cannot lock the ledger's instance file {path}: {source}")]
    Instance {
        path: String,
        #[source]
        source: std::io::Error,
    },
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
    /// The expiry guard extended the current credential until then, while
    /// rotations failed; cleared by the next successful rotation.
    pub extended_until: Option<DateTime<Utc>>,
    pub extended_reason: Option<String>,
    /// Another ledger owns the account's scoped role (its id, as a message).
    pub foreign_owner: Option<String>,
}

/// A housekeeping item that failed and is retried without blocking issuance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckItem {
    pub account: String,
    /// `drop-login`, `disable-login`, `reconcile`, `store-serves`...
    pub kind: String,
    /// The login or the statement concerned; never a secret.
    pub subject: String,
    pub error: String,
    pub first_at: DateTime<Utc>,
    pub attempts: i64,
    pub retry_at: DateTime<Utc>,
}

/// A step that follows a promotion and must happen at least once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub id: i64,
    pub account: String,
    pub version: i64,
    pub kind: String,
    pub attempts: i64,
    pub retry_at: DateTime<Utc>,
}

/// An account's lease as one saga holds it. Every saga write names it, and the
/// ledger refuses the write once the token moved on (a fencing token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub account: String,
    pub holder: String,
    pub token: i64,
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
    /// This ledger's identity (the `meta` table), recorded on the scoped roles
    /// it owns.
    id: Arc<str>,
    instance: Arc<Instance>,
    /// Group commit (see `sync.rs`): each durable write returns once it is on
    /// disk, sharing fsyncs with the writes made at the same time.
    sync: Arc<GroupSync>,
}

/// This process's presence, for lease liveness: a file under the ledger's
/// `<file>.holders/` directory, locked with `flock` for as long as the ledger is
/// open. A holder whose file can be locked by someone else is gone, whatever PID
/// namespace it ran in (containers of one pod share the volume, not the PIDs).
#[derive(Debug)]
struct Instance {
    id: String,
    dir: Option<PathBuf>,
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl Instance {
    fn new(dir: Option<PathBuf>) -> Result<Instance, LedgerError> {
        let id = format!("{:016x}", rand::random::<u64>());
        let Some(dir) = dir else {
            return Ok(Instance {
                id,
                dir: None,
                _lock: None,
            });
        };
        let path = dir.join(format!("{id}.lock"));
        let err = |source| LedgerError::Instance {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(err)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(err)?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| err(std::io::Error::from(e)))?;
        Ok(Instance {
            id,
            dir: Some(dir),
            _lock: Some(lock),
        })
    }

    /// True when `holder` is an instance of this ledger that no longer runs.
    fn is_dead(&self, holder: &str) -> bool {
        let (Some(dir), Some((instance, _))) = (&self.dir, holder.split_once(':')) else {
            return false;
        };
        if instance == self.id || !instance.chars().all(|c| c.is_ascii_hexdigit()) {
            return false;
        }
        let path = dir.join(format!("{instance}.lock"));
        // Read-only: flock needs no write access, and a file another user made
        // (a root `credrotd rotate` beside the daemon) must not look gone.
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            // No presence file: the holder is gone (and was cleaned up).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(_) => return false,
        };
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(_lock) => {
                let _ = std::fs::remove_file(&path);
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_file(dir.join(format!("{}.lock", self.id)));
        }
    }
}

/// SQL that is true while a lease still holds the account (the fencing check),
/// with its account, holder and token bound as parameters `?n`, `?n+1`, `?n+2`.
fn fence(n: usize) -> String {
    format!(
        "EXISTS (SELECT 1 FROM leases l WHERE l.account = ?{n} AND l.holder = ?{} AND l.token = ?{})",
        n + 1,
        n + 2
    )
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
            // NORMAL: a commit does not fsync; each durable write then waits
            // for the shared sync of GroupSync, which is what FULL gave.
            .synchronous(SqliteSynchronous::Normal)
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
        let file = opts.get_filename().to_path_buf();
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
        // The ledger's identity is made once, by whoever creates the ledger.
        let fresh = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        sqlx::query("INSERT INTO meta (key, value) VALUES ('id', ?1) ON CONFLICT(key) DO NOTHING")
            .bind(&fresh)
            .execute(&pool)
            .await?;
        // The identity goes on the scoped roles this ledger claims: it must be
        // on disk before any claim is (the migrations ride along).
        // sqlx turns `sqlite::memory:` into a `file:` name of its own: decide
        // from the URL whether there is a file to sync.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let sync = Arc::new(GroupSync::new((!in_memory).then_some(file.as_path())));
        sync.committed().await.map_err(LedgerError::Sync)?;
        let id: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'id'")
            .fetch_one(&pool)
            .await?;
        let dir = (!in_memory && !file.as_os_str().is_empty())
            .then(|| PathBuf::from(format!("{}.holders", file.display())));
        Ok(Ledger {
            pool,
            id: id.into(),
            instance: Arc::new(Instance::new(dir)?),
            sync,
        })
    }

    /// This ledger's identity, recorded on the scoped roles it owns.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits until the writes committed so far are on disk (group commit).
    /// Every write method calls it before it returns, but for leases (which
    /// die with the process) and session samples.
    async fn durable(&self) -> Result<(), LedgerError> {
        self.sync.committed().await.map_err(LedgerError::Sync)
    }

    /// How many fsyncs group commit has made (for tests and benchmarks).
    pub fn syncs(&self) -> u64 {
        self.sync.syncs()
    }

    /// Records a new credential in state `planned`, with the next version number.
    pub async fn plan(
        &self,
        new: NewCredential<'_>,
        now: DateTime<Utc>,
        lease: &Lease,
    ) -> Result<Credential, LedgerError> {
        self.insert(new, CredState::Planned, None, None, now, lease)
            .await
    }

    /// Records a credential found in the stores and the catalog (rebuilding a
    /// lost ledger) in `state`, with the version the stores gave it (or the next
    /// free one).
    pub async fn adopt(
        &self,
        new: NewCredential<'_>,
        state: CredState,
        version: Option<i64>,
        retire_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        lease: &Lease,
    ) -> Result<Credential, LedgerError> {
        self.insert(new, state, version, retire_at, now, lease)
            .await
    }

    async fn insert(
        &self,
        new: NewCredential<'_>,
        state: CredState,
        version: Option<i64>,
        retire_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        lease: &Lease,
    ) -> Result<Credential, LedgerError> {
        // One statement, so that the version is assigned under SQLite's write lock
        // (a read-then-write transaction could fail with SQLITE_BUSY instead of
        // waiting for a concurrent writer).
        let id: Option<i64> = sqlx::query_scalar(&format!(
            "INSERT INTO credentials (account, version, database, strategy, username, state, issued_at, expires_at, updated_at, retire_at)
             SELECT ?1, MAX(COALESCE(m.v, 0) + 1, COALESCE(?9, 0)), ?2, ?3, ?4, ?8, ?5, ?6, ?7, ?13
             FROM (SELECT MAX(version) AS v FROM credentials WHERE account = ?1) m
             WHERE {} RETURNING id",
            fence(10)
        ))
        .bind(new.account)
        .bind(new.database)
        .bind(new.strategy)
        .bind(new.username)
        .bind(ms(new.issued_at))
        .bind(ms(new.expires_at))
        .bind(ms(now))
        .bind(state.as_str())
        .bind(version)
        .bind(&lease.account)
        .bind(&lease.holder)
        .bind(lease.token)
        .bind(retire_at.map(ms))
        .fetch_optional(&self.pool)
        .await?;
        match id {
            Some(id) => {
                self.durable().await?;
                self.get(id).await
            }
            None => Err(LedgerError::Fenced {
                account: lease.account.clone(),
                token: lease.token,
            }),
        }
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
    /// no longer in `from`, `Fenced` if the lease moved on.
    pub async fn advance(
        &self,
        cred: &Credential,
        from: CredState,
        to: CredState,
        now: DateTime<Utc>,
        lease: &Lease,
    ) -> Result<(), LedgerError> {
        self.transition(cred, from, to, now, None, lease).await
    }

    /// [`Ledger::advance`] and an event-log entry, in one transaction (one
    /// durable write instead of two). `detail` must never carry a secret.
    #[allow(clippy::too_many_arguments)]
    pub async fn advance_noting(
        &self,
        cred: &Credential,
        from: CredState,
        to: CredState,
        now: DateTime<Utc>,
        kind: &str,
        detail: &str,
        lease: &Lease,
    ) -> Result<(), LedgerError> {
        self.transition(cred, from, to, now, Some((kind, detail)), lease)
            .await
    }

    /// Why a fenced update changed no row: the lease moved on, or the row was
    /// not in the expected state.
    async fn refused(
        &self,
        cred: &Credential,
        expected: CredState,
        lease: &Lease,
    ) -> Result<LedgerError, LedgerError> {
        let token: Option<(String, i64)> =
            sqlx::query_as("SELECT holder, token FROM leases WHERE account = ?1")
                .bind(&lease.account)
                .fetch_optional(&self.pool)
                .await?;
        if token.as_ref() != Some(&(lease.holder.clone(), lease.token)) {
            return Ok(LedgerError::Fenced {
                account: lease.account.clone(),
                token: lease.token,
            });
        }
        let actual = self.get(cred.id).await?.state;
        Ok(LedgerError::StateConflict {
            account: cred.account.clone(),
            version: cred.version,
            expected,
            actual: actual.to_string(),
        })
    }

    async fn transition(
        &self,
        cred: &Credential,
        from: CredState,
        to: CredState,
        now: DateTime<Utc>,
        note: Option<(&str, &str)>,
        lease: &Lease,
    ) -> Result<(), LedgerError> {
        // The first statement writes, so the transaction takes SQLite's write
        // lock at once (and waits for it) instead of upgrading later.
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(&format!(
            "UPDATE credentials SET state = ?1, updated_at = ?2 WHERE id = ?3 AND state = ?4 AND {}",
            fence(5)
        ))
        .bind(to.as_str())
        .bind(ms(now))
        .bind(cred.id)
        .bind(from.as_str())
        .bind(&lease.account)
        .bind(&lease.holder)
        .bind(lease.token)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Err(self.refused(cred, from, lease).await?);
        }
        if let Some((kind, detail)) = note {
            insert_event(
                &mut *tx,
                now,
                &cred.account,
                Some(cred.version),
                kind,
                detail,
            )
            .await?;
        }
        tx.commit().await?;
        self.durable().await
    }

    /// Promotes `new` (published) to current, moves the previous current, if
    /// any, to retiring until `retire_at`, records the successful rotation and
    /// the next one, and queues the consumer notification, all in one
    /// transaction: a crash right after promotion loses none of it.
    #[allow(clippy::too_many_arguments)]
    pub async fn promote(
        &self,
        new: &Credential,
        previous: Option<&Credential>,
        retire_at: DateTime<Utc>,
        next_rotation: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        detail: Option<&str>,
        lease: &Lease,
    ) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        if let Some(prev) = previous {
            let done = sqlx::query(&format!(
                "UPDATE credentials SET state = 'retiring', retire_at = ?1, updated_at = ?2 WHERE id = ?3 AND state = 'current' AND {}",
                fence(4)
            ))
            .bind(ms(retire_at))
            .bind(ms(now))
            .bind(prev.id)
            .bind(&lease.account)
            .bind(&lease.holder)
            .bind(lease.token)
            .execute(&mut *tx)
            .await?;
            // The predecessor must still be current: otherwise someone else moved
            // it and promoting would leave two current credentials.
            if done.rows_affected() != 1 {
                tx.rollback().await?;
                return Err(self.refused(prev, CredState::Current, lease).await?);
            }
        }
        let done = sqlx::query(&format!(
            "UPDATE credentials SET state = 'current', updated_at = ?1 WHERE id = ?2 AND state = 'published' AND {}",
            fence(3)
        ))
        .bind(ms(now))
        .bind(new.id)
        .bind(&lease.account)
        .bind(&lease.holder)
        .bind(lease.token)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Err(self.refused(new, CredState::Published, lease).await?);
        }
        sqlx::query("INSERT INTO accounts (account) VALUES (?1) ON CONFLICT(account) DO NOTHING")
            .bind(&new.account)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE accounts SET last_result = 'ok', last_error = NULL, last_attempt_at = ?1, failures = 0,
             retry_at = NULL, next_rotation_at = ?2, extended_until = NULL, extended_reason = NULL
             WHERE account = ?3",
        )
        .bind(ms(now))
        .bind(next_rotation.map(ms))
        .bind(&new.account)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO outbox (account, version, kind, retry_at) VALUES (?1, ?2, 'notify', ?3)",
        )
        .bind(&new.account)
        .bind(new.version)
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        if let Some(detail) = detail {
            insert_event(
                &mut *tx,
                now,
                &new.account,
                Some(new.version),
                "current",
                detail,
            )
            .await?;
        }
        tx.commit().await?;
        self.durable().await
    }

    /// Records a credential's new expiry.
    pub async fn set_expires_at(
        &self,
        cred: &Credential,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
        lease: &Lease,
    ) -> Result<(), LedgerError> {
        let done = sqlx::query(&format!(
            "UPDATE credentials SET expires_at = ?1, updated_at = ?2 WHERE id = ?3 AND {}",
            fence(4)
        ))
        .bind(ms(at))
        .bind(ms(now))
        .bind(cred.id)
        .bind(&lease.account)
        .bind(&lease.holder)
        .bind(lease.token)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() != 1 {
            return Err(self.refused(cred, cred.state, lease).await?);
        }
        self.durable().await
    }

    /// Records which stores hold a credential.
    pub async fn set_stores(
        &self,
        cred: &Credential,
        stores: &[String],
        now: DateTime<Utc>,
        lease: &Lease,
    ) -> Result<(), LedgerError> {
        let json = serde_json::to_string(stores).unwrap_or_else(|_| "[]".into());
        let done = sqlx::query(&format!(
            "UPDATE credentials SET stores = ?1, updated_at = ?2 WHERE id = ?3 AND {}",
            fence(4)
        ))
        .bind(json)
        .bind(ms(now))
        .bind(cred.id)
        .bind(&lease.account)
        .bind(&lease.holder)
        .bind(lease.token)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() != 1 {
            return Err(self.refused(cred, cred.state, lease).await?);
        }
        self.durable().await
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
        insert_event(&self.pool, at, account, version, kind, detail).await?;
        self.durable().await
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
             retry_at = NULL, next_rotation_at = ?2 WHERE account = ?3",
        )
        .bind(ms(now))
        .bind(next.map(ms))
        .bind(account)
        .execute(&self.pool)
        .await?;
        self.durable().await
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
        self.durable().await?;
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
        self.durable().await
    }

    /// A fresh lease holder id for one saga: `instance:nonce`. Every call gets
    /// its own, so two sagas in one process exclude each other like two
    /// processes do.
    pub fn new_holder(&self) -> String {
        format!("{}:{:016x}", self.instance.id, rand::random::<u64>())
    }

    /// Takes (or, for the same holder, extends) the account's lease for `ttl`.
    /// Returns the lease with its fencing token, or `None` if another live holder
    /// has it. A lease whose holder is gone (its instance file is unlocked) is
    /// taken over; a new holder always gets a higher token.
    pub async fn acquire(
        &self,
        account: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<Lease>, LedgerError> {
        let until = now + crate::schedule::to_chrono(ttl);
        let token: Option<i64> = sqlx::query_scalar(
            "INSERT INTO leases (account, holder, expires_at, token) VALUES (?1, ?2, ?3, 1)
             ON CONFLICT(account) DO UPDATE SET
               token = CASE WHEN leases.holder = excluded.holder THEN leases.token ELSE leases.token + 1 END,
               holder = excluded.holder, expires_at = excluded.expires_at
             WHERE leases.holder = excluded.holder OR leases.expires_at < ?4
             RETURNING token",
        )
        .bind(account)
        .bind(holder)
        .bind(ms(until))
        .bind(ms(now))
        .fetch_optional(&self.pool)
        .await?;
        let lease = |token| Lease {
            account: account.to_owned(),
            holder: holder.to_owned(),
            token,
        };
        if let Some(token) = token {
            return Ok(Some(lease(token)));
        }
        let other: Option<String> =
            sqlx::query_scalar("SELECT holder FROM leases WHERE account = ?1")
                .bind(account)
                .fetch_optional(&self.pool)
                .await?;
        match other {
            Some(other) if self.instance.is_dead(&other) => {
                let token: Option<i64> = sqlx::query_scalar(
                    "UPDATE leases SET holder = ?1, expires_at = ?2, token = token + 1
                     WHERE account = ?3 AND holder = ?4 RETURNING token",
                )
                .bind(holder)
                .bind(ms(until))
                .bind(account)
                .bind(&other)
                .fetch_optional(&self.pool)
                .await?;
                Ok(token.map(lease))
            }
            _ => Ok(None),
        }
    }

    /// Gives the lease back. The row stays (expired) so that the next holder's
    /// token is higher than this one's.
    pub async fn release(&self, lease: &Lease) -> Result<(), LedgerError> {
        sqlx::query("UPDATE leases SET expires_at = 0 WHERE account = ?1 AND holder = ?2")
            .bind(&lease.account)
            .bind(&lease.holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Gives back every lease this process holds (after abandoning its sagas at
    /// shutdown), so that the next saga does not wait for them to expire.
    pub async fn release_all_mine(&self) -> Result<(), LedgerError> {
        sqlx::query("UPDATE leases SET expires_at = 0 WHERE substr(holder, 1, ?1) = ?2")
            .bind(self.instance.id.len() as i64 + 1)
            .bind(format!("{}:", self.instance.id))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records (or updates) a stuck housekeeping item and when to retry it.
    /// `subject` and `error` must never carry a secret.
    pub async fn stuck(
        &self,
        account: &str,
        kind: &str,
        subject: &str,
        error: &str,
        now: DateTime<Utc>,
        retry_at: DateTime<Utc>,
    ) -> Result<i64, LedgerError> {
        let attempts: i64 = sqlx::query_scalar(
            "INSERT INTO stuck (account, kind, subject, error, first_at, last_at, retry_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)
             ON CONFLICT(account, kind, subject) DO UPDATE SET
               error = excluded.error, last_at = excluded.last_at, retry_at = excluded.retry_at,
               attempts = stuck.attempts + 1
             RETURNING attempts",
        )
        .bind(account)
        .bind(kind)
        .bind(subject)
        .bind(error)
        .bind(ms(now))
        .bind(ms(retry_at))
        .fetch_one(&self.pool)
        .await?;
        self.durable().await?;
        Ok(attempts)
    }

    /// Clears a stuck item (it succeeded, or no longer applies).
    pub async fn unstuck(
        &self,
        account: &str,
        kind: &str,
        subject: &str,
    ) -> Result<(), LedgerError> {
        sqlx::query("DELETE FROM stuck WHERE account = ?1 AND kind = ?2 AND subject = ?3")
            .bind(account)
            .bind(kind)
            .bind(subject)
            .execute(&self.pool)
            .await?;
        self.durable().await
    }

    /// Stuck items, of one account or of all, oldest first.
    pub async fn stuck_items(&self, account: Option<&str>) -> Result<Vec<StuckItem>, LedgerError> {
        let rows = sqlx::query(
            "SELECT * FROM stuck WHERE ?1 IS NULL OR account = ?1 ORDER BY account, first_at, id",
        )
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| StuckItem {
                account: r.get("account"),
                kind: r.get("kind"),
                subject: r.get("subject"),
                error: r.get("error"),
                first_at: from_ms(r.get("first_at")),
                attempts: r.get("attempts"),
                retry_at: from_ms(r.get("retry_at")),
            })
            .collect())
    }

    /// Outbox items of an account that are due at `now`.
    pub async fn outbox_due(
        &self,
        account: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxItem>, LedgerError> {
        let rows =
            sqlx::query("SELECT * FROM outbox WHERE account = ?1 AND retry_at <= ?2 ORDER BY id")
                .bind(account)
                .bind(ms(now))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(outbox_item).collect())
    }

    /// Every outbox item (for the scheduler's wake-up times and `status`).
    pub async fn outbox(&self) -> Result<Vec<OutboxItem>, LedgerError> {
        let rows = sqlx::query("SELECT * FROM outbox ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(outbox_item).collect())
    }

    /// Marks an outbox item done.
    pub async fn outbox_done(&self, id: i64) -> Result<(), LedgerError> {
        sqlx::query("DELETE FROM outbox WHERE id = ?1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.durable().await
    }

    /// Reschedules a failed outbox item. `error` must never carry a secret.
    pub async fn outbox_retry(
        &self,
        id: i64,
        retry_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, retry_at = ?1, last_error = ?2 WHERE id = ?3",
        )
        .bind(ms(retry_at))
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.durable().await
    }

    /// Records that the expiry guard extended the account's current credential.
    pub async fn set_extended(
        &self,
        account: &str,
        until: Option<DateTime<Utc>>,
        reason: Option<&str>,
    ) -> Result<(), LedgerError> {
        self.ensure_account(account).await?;
        sqlx::query(
            "UPDATE accounts SET extended_until = ?1, extended_reason = ?2 WHERE account = ?3",
        )
        .bind(until.map(ms))
        .bind(reason)
        .bind(account)
        .execute(&self.pool)
        .await?;
        self.durable().await
    }

    /// Records (or clears) that another ledger owns the account.
    pub async fn set_foreign_owner(
        &self,
        account: &str,
        owner: Option<&str>,
    ) -> Result<(), LedgerError> {
        self.ensure_account(account).await?;
        sqlx::query("UPDATE accounts SET foreign_owner = ?1 WHERE account = ?2")
            .bind(owner)
            .bind(account)
            .execute(&self.pool)
            .await?;
        self.durable().await
    }

    /// Records that `roles` had sessions on `database` at `at` (one sample of
    /// the server's session list). The first sample of a database starts its
    /// window: before it, nothing is known.
    pub async fn record_activity(
        &self,
        database: &str,
        roles: &[String],
        at: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO activity_since (database, since) VALUES (?1, ?2) ON CONFLICT (database) DO NOTHING")
            .bind(database)
            .bind(ms(at))
            .execute(&mut *tx)
            .await?;
        for role in roles {
            sqlx::query(
                "INSERT INTO activity (database, role, first_seen, last_seen) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (database, role) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)",
            )
            .bind(database)
            .bind(role)
            .bind(ms(at))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// What the samples say, per database.
    pub async fn activity(&self) -> Result<BTreeMap<String, crate::audit::Activity>, LedgerError> {
        let mut out: BTreeMap<String, crate::audit::Activity> = BTreeMap::new();
        let since: Vec<(String, i64)> =
            sqlx::query_as("SELECT database, since FROM activity_since")
                .fetch_all(&self.pool)
                .await?;
        for (db, since) in since {
            out.insert(
                db,
                crate::audit::Activity {
                    since: from_ms(since),
                    last_seen: BTreeMap::new(),
                },
            );
        }
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT database, role, last_seen FROM activity")
                .fetch_all(&self.pool)
                .await?;
        for (db, role, last) in rows {
            if let Some(a) = out.get_mut(&db) {
                a.last_seen.insert(role, from_ms(last));
            }
        }
        Ok(out)
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
        extended_until: r.get::<Option<i64>, _>("extended_until").map(from_ms),
        extended_reason: r.get("extended_reason"),
        foreign_owner: r.get("foreign_owner"),
    }
}

fn outbox_item(r: &sqlx::sqlite::SqliteRow) -> OutboxItem {
    OutboxItem {
        id: r.get("id"),
        account: r.get("account"),
        version: r.get("version"),
        kind: r.get("kind"),
        attempts: r.get("attempts"),
        retry_at: from_ms(r.get("retry_at")),
    }
}

async fn insert_event<'e>(
    ex: impl sqlx::Executor<'e, Database = sqlx::Sqlite>,
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
    .execute(ex)
    .await?;
    Ok(())
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn durable_writes_share_fsyncs_and_leases_need_none() {
        let (_dir, l) = ledger().await;
        assert_eq!(l.syncs(), 1, "the ledger's identity is on disk once open");
        l.event(Utc::now(), "a", None, "x", "one write")
            .await
            .unwrap();
        assert_eq!(l.syncs(), 2, "a write returns once it is on disk");
        let _lease = lease(&l, "a").await;
        assert_eq!(l.syncs(), 2, "a lease dies with the process: no fsync");
        // Writes made while a sync runs share the next one.
        let writes = 200;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..writes {
            let l = l.clone();
            tasks.spawn(async move {
                l.event(Utc::now(), "a", None, "x", &format!("write {i}"))
                    .await
                    .unwrap()
            });
        }
        while let Some(t) = tasks.join_next().await {
            t.unwrap();
        }
        let syncs = l.syncs() - 2;
        assert!(
            (1..writes).contains(&syncs),
            "{writes} concurrent writes took {syncs} fsyncs"
        );
        assert_eq!(l.events(0, 1000).await.unwrap().len(), writes as usize + 1);
    }

    #[tokio::test]
    async fn an_in_memory_ledger_never_syncs() {
        let l = Ledger::open("sqlite::memory:").await.unwrap();
        assert!(!l.sync.file_backed());
        l.event(Utc::now(), "a", None, "x", "y").await.unwrap();
        assert_eq!(l.syncs(), 0);
        let (_dir, on_disk) = ledger().await;
        assert!(on_disk.sync.file_backed());
    }

    async fn lease(l: &Ledger, account: &str) -> Lease {
        l.acquire(
            account,
            &l.new_holder(),
            Duration::from_secs(60),
            Utc::now(),
        )
        .await
        .unwrap()
        .unwrap()
    }

    #[tokio::test]
    async fn activity_keeps_the_first_sample_and_the_latest_sighting() {
        let (_d, l) = ledger().await;
        assert!(l.activity().await.unwrap().is_empty());
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let t1 = t0 + chrono::Duration::hours(1);
        l.record_activity("main", &[], t0).await.unwrap();
        l.record_activity("main", &["app".into(), "etl".into()], t1)
            .await
            .unwrap();
        // A late sample never moves a sighting back.
        l.record_activity("main", &["app".into()], t0)
            .await
            .unwrap();
        let a = &l.activity().await.unwrap()["main"];
        assert_eq!(a.since, t0);
        assert_eq!(a.last_seen["app"], t1);
        assert_eq!(a.last_seen["etl"], t1);
        assert_eq!(a.last_seen.len(), 2);
    }

    #[tokio::test]
    async fn versions_increase_per_account_and_transitions_are_guarded() {
        let (_d, l) = ledger().await;
        let now = Utc::now();
        let (la, lb) = (lease(&l, "a").await, lease(&l, "b").await);
        let a1 = l.plan(new("a", "a_1"), now, &la).await.unwrap();
        let a2 = l.plan(new("a", "a_2"), now, &la).await.unwrap();
        let b1 = l.plan(new("b", "b_1"), now, &lb).await.unwrap();
        assert_eq!((a1.version, a2.version, b1.version), (1, 2, 1));
        l.advance(&a1, CredState::Planned, CredState::Created, now, &la)
            .await
            .unwrap();
        let err = l
            .advance(&a1, CredState::Planned, CredState::Created, now, &la)
            .await
            .unwrap_err();
        assert!(matches!(err, LedgerError::StateConflict { .. }), "{err}");
        assert_eq!(l.get(a1.id).await.unwrap().state, CredState::Created);
    }

    #[tokio::test]
    async fn promote_retires_previous_records_success_and_queues_notification() {
        let (_d, l) = ledger().await;
        let now = Utc::now();
        let la = lease(&l, "a").await;
        let publish = |c: Credential| {
            let (l, la) = (l.clone(), la.clone());
            async move {
                for (f, t) in [
                    (CredState::Planned, CredState::Created),
                    (CredState::Created, CredState::Verified),
                    (CredState::Verified, CredState::Published),
                ] {
                    l.advance(&c, f, t, now, &la).await.unwrap();
                }
                c
            }
        };
        let a1 = publish(l.plan(new("a", "a_1"), now, &la).await.unwrap()).await;
        l.promote(&a1, None, now, None, now, None, &la)
            .await
            .unwrap();
        l.record_failure("a", now, "boom", now).await.unwrap();
        let a2 = publish(l.plan(new("a", "a_2"), now, &la).await.unwrap()).await;
        let until = now + chrono::Duration::minutes(5);
        let next = now + chrono::Duration::hours(1);
        l.promote(&a2, Some(&a1), until, Some(next), now, Some("d"), &la)
            .await
            .unwrap();
        let a1 = l.get(a1.id).await.unwrap();
        assert_eq!(a1.state, CredState::Retiring);
        assert_eq!(
            a1.retire_at.unwrap().timestamp_millis(),
            until.timestamp_millis()
        );
        assert_eq!(l.get(a2.id).await.unwrap().state, CredState::Current);
        // The success is recorded with the promotion: a crash right after it
        // cannot leave the earlier failure on record (an early retry).
        let st = l.account("a").await.unwrap();
        assert_eq!(st.failures, 0);
        assert_eq!(st.last_result.as_deref(), Some("ok"));
        assert_eq!(
            st.next_rotation_at.map(|t| t.timestamp_millis()),
            Some(next.timestamp_millis())
        );
        let outbox = l.outbox().await.unwrap();
        assert_eq!(
            outbox.iter().map(|o| o.version).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[tokio::test]
    async fn leases_exclude_other_holders_until_expiry_and_tokens_fence_writes() {
        let (dir, l1) = ledger().await;
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        let l2 = Ledger::open(&url).await.unwrap();
        let (h1, h2, h3) = (l1.new_holder(), l2.new_holder(), l1.new_holder());
        let ttl = Duration::from_secs(60);
        let now = Utc::now();
        let first = l1.acquire("a", &h1, ttl, now).await.unwrap().unwrap();
        let again = l1.acquire("a", &h1, ttl, now).await.unwrap().unwrap();
        assert_eq!(first, again, "the same holder extends its lease");
        assert!(
            l2.acquire("a", &h2, ttl, now).await.unwrap().is_none(),
            "another process is refused"
        );
        assert!(
            l1.acquire("a", &h3, ttl, now).await.unwrap().is_none(),
            "another saga in the same process is refused"
        );
        assert!(l2.acquire("b", &h2, ttl, now).await.unwrap().is_some());
        let later = now + chrono::Duration::seconds(61);
        let taken = l2.acquire("a", &h2, ttl, later).await.unwrap().unwrap();
        assert!(
            taken.token > first.token,
            "a new holder gets a higher token"
        );
        // The paused first holder's writes are refused by the fence.
        let err = l1.plan(new("a", "a_1"), later, &first).await.unwrap_err();
        assert!(matches!(err, LedgerError::Fenced { .. }), "{err}");
        let cred = l2.plan(new("a", "a_1"), later, &taken).await.unwrap();
        let err = l1
            .advance(&cred, CredState::Planned, CredState::Created, later, &first)
            .await
            .unwrap_err();
        assert!(matches!(err, LedgerError::Fenced { .. }), "{err}");
        l2.release(&taken).await.unwrap();
        let back = l1.acquire("a", &h1, ttl, later).await.unwrap().unwrap();
        assert!(
            back.token > taken.token,
            "tokens never go back after a release"
        );
    }

    #[tokio::test]
    async fn lease_of_a_gone_instance_is_taken_over_whatever_its_pid() {
        let (dir, l) = ledger().await;
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        let now = Utc::now();
        // Another "process" (its own instance file) takes the lease and goes away
        // without releasing it, as kill -9 would.
        let other = Ledger::open(&url).await.unwrap();
        let held = other
            .acquire("a", &other.new_holder(), Duration::from_secs(3600), now)
            .await
            .unwrap()
            .unwrap();
        let mine = l.new_holder();
        assert!(
            l.acquire("a", &mine, Duration::from_secs(60), now)
                .await
                .unwrap()
                .is_none(),
            "a live instance keeps its lease"
        );
        other.close().await;
        drop(other);
        let taken = l
            .acquire("a", &mine, Duration::from_secs(60), now)
            .await
            .unwrap()
            .unwrap();
        assert!(taken.token > held.token);
    }

    #[tokio::test]
    async fn stuck_items_count_attempts_and_clear() {
        let (_d, l) = ledger().await;
        let now = Utc::now();
        let later = now + chrono::Duration::seconds(10);
        assert_eq!(
            l.stuck("a", "drop-login", "a_1", "boom", now, later)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            l.stuck("a", "drop-login", "a_1", "boom again", now, later)
                .await
                .unwrap(),
            2
        );
        let items = l.stuck_items(Some("a")).await.unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].error, "boom again");
        l.unstuck("a", "drop-login", "a_1").await.unwrap();
        assert!(l.stuck_items(None).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_ledger_id_survives_reopening() {
        let (dir, l) = ledger().await;
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        let again = Ledger::open(&url).await.unwrap();
        assert_eq!(l.id(), again.id());
        assert_eq!(l.id().len(), 32);
        let (_d2, other) = ledger().await;
        assert_ne!(l.id(), other.id());
    }
}
