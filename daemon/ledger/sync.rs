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
    /// The WAL, open, with its inode: kept open so that a write-back error
    /// the kernel reports is seen here; reopened (and its directory synced)
    /// when SQLite removed the WAL and made a new one.
    open: Option<(std::fs::File, u64)>,
    /// The first failed sync. Linux may report a failed write-back once and
    /// then call the pages clean, so a later sync that succeeds proves
    /// nothing: every write fails from then on, until credrotd restarts and
    /// SQLite recovers from what is really on disk.
    failed: Option<String>,
}

impl GroupSync {
    /// `database`: the ledger's file, `None` when it lives in memory.
    pub(super) fn new(database: Option<&Path>) -> GroupSync {
        GroupSync {
            wal: database.map(|d| PathBuf::from(format!("{}-wal", d.display()))),
            committed: AtomicU64::new(0),
            synced: Mutex::new(Synced::default()),
            syncs: AtomicU64::new(0),
        }
    }

    /// Whether writes wait for a file to be synced.
    #[cfg(test)]
    pub(super) fn file_backed(&self) -> bool {
        self.wal.is_some()
    }

    /// Returns once the commit the caller just made is on disk.
    pub(super) async fn committed(&self) -> std::io::Result<()> {
        let Some(wal) = &self.wal else {
            return Ok(());
        };
        let mine = self.committed.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = self.synced.lock().await;
        if let Some(e) = &synced.failed {
            return Err(failed(e));
        }
        if synced.ticket >= mine {
            return Ok(()); // a sync that started after our commit covered it
        }
        // Every ticket handed out so far belongs to a commit that returned.
        let upto = self.committed.load(Ordering::SeqCst);
        let wal = wal.clone();
        let open = synced.open.take();
        let (result, open) = tokio::task::spawn_blocking(move || sync_wal(&wal, open))
            .await
            .map_err(std::io::Error::other)?;
        synced.open = open;
        match result {
            Ok(synced_a_file) => {
                if synced_a_file {
                    self.syncs.fetch_add(1, Ordering::Relaxed);
                }
                synced.ticket = upto;
                Ok(())
            }
            Err(e) => {
                let e = e.to_string();
                let err = failed(&e);
                synced.failed = Some(e);
                Err(err)
            }
        }
    }

    /// fsyncs made so far.
    pub(super) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

fn failed(e: &str) -> std::io::Error {
    std::io::Error::other(format!(
        "an fsync of the ledger's write-ahead log failed ({e}); recent writes may not be on disk, \
         so credrotd refuses to go on: restart it once the disk is sound"
    ))
}

/// fdatasyncs the WAL (kept open in `open` while it is the same file), and
/// its directory when the WAL is a new file. A WAL that is gone was
/// checkpointed into the database file, which SQLite synced before removing
/// it. Returns whether a file was synced, and the open WAL.
#[allow(clippy::type_complexity)]
fn sync_wal(
    wal: &Path,
    open: Option<(std::fs::File, u64)>,
) -> (std::io::Result<bool>, Option<(std::fs::File, u64)>) {
    let current = match std::fs::metadata(wal) {
        Ok(m) => m.ino(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Ok(false), None),
        Err(e) => return (Err(e), open),
    };
    let (file, new) = match open {
        Some((file, inode)) if inode == current => (file, false),
        _ => match std::fs::File::open(wal) {
            Ok(f) => (f, true),
            Err(e) => return (Err(e), None),
        },
    };
    let mut result = file.sync_data().map(|()| true);
    if result.is_ok() && new {
        let dir = match wal.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        result = std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map(|()| true);
    }
    // The inode read before opening: if the file changed in between, the next
    // sync reopens it and syncs the directory again.
    (result, Some((file, current)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wal_is_synced_once_per_group_and_a_missing_one_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let sync = GroupSync::new(Some(&db));
        assert!(
            sync.committed().await.is_ok(),
            "no WAL yet: nothing to sync"
        );
        assert_eq!(sync.syncs(), 0);
        std::fs::write(dir.path().join("state.db-wal"), b"frames").unwrap();
        sync.committed().await.unwrap();
        sync.committed().await.unwrap();
        assert_eq!(sync.syncs(), 2);
    }

    #[tokio::test]
    async fn after_a_failed_sync_every_write_fails_even_when_the_disk_looks_fine() {
        let dir = tempfile::tempdir().unwrap();
        // The ledger's directory is a regular file: reading the WAL fails with
        // ENOTDIR, not "not found".
        let parent = dir.path().join("ledger");
        std::fs::write(&parent, b"").unwrap();
        let sync = GroupSync::new(Some(&parent.join("state.db")));
        let first = sync.committed().await.unwrap_err().to_string();
        assert!(first.contains("restart it"), "{first}");
        // The path is sound now, and a sync would succeed; the writes made
        // before it still may not be on disk.
        std::fs::remove_file(&parent).unwrap();
        std::fs::create_dir(&parent).unwrap();
        std::fs::write(parent.join("state.db-wal"), b"frames").unwrap();
        assert!(sync.committed().await.is_err());
        assert_eq!(sync.syncs(), 0);
    }
}
