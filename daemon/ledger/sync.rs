//! Group commit for the SQLite ledger.
//!
//! SQLite with `synchronous=FULL` syncs the write-ahead log inside every
//! commit, under its write lock: concurrent sagas queue behind each other's
//! fsyncs (14 per rotation were measured, with busy-handler sleeps between
//! them). The ledger commits with `synchronous=NORMAL` instead (a commit
//! appends to the WAL, no fsync) and then waits here until the WAL is on disk
//! before the write method returns, so a caller sees exactly what `FULL` gave
//! it: when a write returns, it survives a power loss. One `fdatasync` covers
//! every commit made before it started, so the sagas that commit while one
//! sync runs share the next one.
//!
//! A process crash (`kill -9`) needs none of this: committed WAL frames are in
//! the kernel's page cache either way.
//!
//! A failed sync fails the write that waited for it, although its commit is
//! already visible to later reads: to the saga that is a step whose record
//! moved on and whose caller stopped before the side effect, the case every
//! crash leaves and recovery already handles.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Mutex;

#[derive(Debug)]
pub(super) struct GroupSync {
    /// The `-wal` file; `None` for an in-memory ledger.
    wal: Option<PathBuf>,
    /// One ticket per commit, taken after the commit returned.
    committed: AtomicU64,
    synced: Mutex<Synced>,
    /// WAL fsyncs done (not counting SQLite's own at checkpoints).
    syncs: AtomicU64,
}

#[derive(Debug, Default)]
struct Synced {
    /// Every commit with a ticket up to this one is on disk.
    ticket: u64,
    /// The WAL's inode when its directory entry was last synced: SQLite
    /// removes the WAL when the last connection closes and creates it anew.
    wal_inode: Option<u64>,
}

impl GroupSync {
    pub(super) fn new(database: &Path) -> GroupSync {
        let in_memory = database.as_os_str().is_empty() || database == Path::new(":memory:");
        GroupSync {
            wal: (!in_memory).then(|| PathBuf::from(format!("{}-wal", database.display()))),
            committed: AtomicU64::new(0),
            synced: Mutex::new(Synced::default()),
            syncs: AtomicU64::new(0),
        }
    }

    /// Returns once the commit the caller just made is on disk.
    pub(super) async fn committed(&self) -> std::io::Result<()> {
        let Some(wal) = &self.wal else {
            return Ok(());
        };
        let mine = self.committed.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = self.synced.lock().await;
        if synced.ticket >= mine {
            return Ok(()); // a sync that started after our commit covered it
        }
        // Every ticket handed out so far belongs to a commit that returned.
        let upto = self.committed.load(Ordering::SeqCst);
        let wal = wal.clone();
        let known = synced.wal_inode;
        let inode = tokio::task::spawn_blocking(move || sync_wal(&wal, known))
            .await
            .map_err(std::io::Error::other)??;
        if inode.is_some() {
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        synced.ticket = upto;
        synced.wal_inode = inode.or(synced.wal_inode);
        Ok(())
    }

    /// fsyncs made so far.
    pub(super) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

/// fdatasyncs the WAL, and its directory when the WAL is a new file. A WAL
/// that is gone was checkpointed into the database file, which SQLite synced
/// before removing it. Returns the WAL's inode.
fn sync_wal(wal: &Path, known_inode: Option<u64>) -> std::io::Result<Option<u64>> {
    let file = match std::fs::File::open(wal) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    file.sync_data()?;
    let inode = file.metadata()?.ino();
    if known_inode != Some(inode) {
        if let Some(dir) = wal.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(Some(inode))
}
