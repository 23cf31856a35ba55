//! The file store: `<dir>/<account>.json`, written atomically (temp file in the
//! same directory, fsync, rename, fsync of the directory) with a configured mode.
//! For sidecars that share a volume with the application.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{held_if, Held, Publication, Store, StoreError, Undo};

pub struct FileStore {
    name: String,
    dir: PathBuf,
    mode: u32,
}

impl FileStore {
    pub fn new(name: &str, dir: PathBuf, mode: u32) -> Self {
        FileStore {
            name: name.to_owned(),
            dir,
            mode,
        }
    }

    /// Where an account's secret lives.
    pub fn file_for(&self, account: &str) -> PathBuf {
        self.dir.join(format!("{account}.json"))
    }

    fn write_err(&self, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        let path = path.display().to_string();
        move |source| StoreError::Write {
            store: self.name.clone(),
            path,
            source,
        }
    }

    fn write_atomic(&self, account: &str, body: &[u8]) -> Result<(), StoreError> {
        let target = self.file_for(account);
        if !self.dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(&self.dir)
                .map_err(self.write_err(&self.dir))?;
        }
        // An unpredictable name, created exclusively and never through a
        // symlink: nobody else who can write to the directory can make us write
        // the secret somewhere else.
        let nonce: u64 = rand::random();
        let tmp = self.dir.join(format!(".{account}.json.{nonce:016x}.tmp"));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                // No permissions for others from the first byte; the configured
                // mode is applied before the rename makes it visible.
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(body)?;
            f.set_permissions(fs::Permissions::from_mode(self.mode))?;
            f.sync_all()?;
            fs::rename(&tmp, &target)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(self.write_err(&target)(e));
        }
        // The new document is in place; a failed directory fsync only weakens
        // durability across a power loss, so it is not a failed publish.
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            tracing::warn!(store = %self.name, error = %e, "cannot fsync the secrets directory");
        }
        Ok(())
    }
}

use std::os::unix::fs::DirBuilderExt;

/// Reads a file, refusing to follow a symlink planted in its place.
fn read_nofollow(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut out)?;
    Ok(out)
}

#[async_trait]
impl Store for FileStore {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, publication: &Publication<'_>) -> Result<Undo, StoreError> {
        let body = publication.to_json();
        let target = self.file_for(publication.account);
        let previous = match read_nofollow(&target) {
            Ok(bytes) => Some(zeroize::Zeroizing::new(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(StoreError::Read {
                    store: self.name.clone(),
                    path: target.display().to_string(),
                    source,
                })
            }
        };
        // Small synchronous writes; fsync is the slow part and is bounded.
        tokio::task::block_in_place(|| self.write_atomic(publication.account, &body))?;
        Ok(Undo {
            account: publication.account.to_owned(),
            path: publication.path.to_owned(),
            version: publication.version,
            previous,
            written: None,
            created_secret: false,
            unchanged: false,
        })
    }

    async fn revert(&self, undo: Undo) -> Result<(), StoreError> {
        match &undo.previous {
            Some(bytes) => tokio::task::block_in_place(|| self.write_atomic(&undo.account, bytes)),
            None => {
                let target = self.file_for(&undo.account);
                match fs::remove_file(&target) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Write {
                        store: self.name.clone(),
                        path: target.display().to_string(),
                        source: e,
                    }),
                    _ => Ok(()),
                }
            }
        }
    }

    async fn current_version(&self, account: &str, _path: &str) -> Result<Option<i64>, StoreError> {
        let path = self.file_for(account);
        let text = match read_nofollow(&path) {
            Ok(t) => zeroize::Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Read {
                    store: self.name.clone(),
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        #[derive(serde::Deserialize)]
        struct Version {
            version: i64,
        }
        Ok(serde_json::from_slice::<Version>(&text)
            .ok()
            .map(|v| v.version))
    }

    async fn fetch(
        &self,
        account: &str,
        _path: &str,
        version: Option<i64>,
    ) -> Result<Option<Held>, StoreError> {
        let path = self.file_for(account);
        let text = match read_nofollow(&path) {
            Ok(t) => zeroize::Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Read {
                    store: self.name.clone(),
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        let Some(held) = Held::from_payload(&text, account) else {
            super::warn_foreign(&self.name, &path.display().to_string());
            return Ok(None);
        };
        // The file holds one credential: an older version is gone.
        Ok(held_if(held, version))
    }

    async fn check(&self) -> Result<(), StoreError> {
        let probe = self
            .dir
            .join(format!(".credrotd-probe-{}", std::process::id()));
        let res = (|| {
            fs::create_dir_all(&self.dir)?;
            File::create(&probe)?.sync_all()?;
            fs::remove_file(&probe)
        })();
        res.map_err(self.write_err(&probe))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Endpoint;
    use crate::secret::Secret;
    use chrono::Utc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn publishes_atomically_with_mode_and_reads_version_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new("local", dir.path().join("secrets"), 0o440);
        let pw = Secret::generate();
        let endpoint = Endpoint {
            engine: "postgres",
            host: "db".into(),
            port: 5432,
            dbname: "orders".into(),
        };
        let now = Utc::now();
        let p = Publication {
            account: "etl",
            path: "database/orders/etl",
            version: 7,
            username: "etl_20260101000000",
            password: &pw,
            endpoint: &endpoint,
            issued_at: now,
            expires_at: now,
        };
        assert_eq!(store.current_version("etl", "").await.unwrap(), None);
        let undo = store.publish(&p).await.unwrap();
        assert!(undo.previous.is_none());
        let file = store.file_for("etl");
        let meta = fs::metadata(&file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o440);
        let doc: serde_json::Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        for key in [
            "engine",
            "host",
            "port",
            "dbname",
            "username",
            "password",
            "url",
            "account",
            "version",
            "issued_at",
            "expires_at",
        ] {
            assert!(doc.get(key).is_some(), "payload lacks {key}");
        }
        assert_eq!(doc["password"], pw.expose());
        assert_eq!(store.current_version("etl", "").await.unwrap(), Some(7));
        // No temp file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("secrets"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");

        // A second publish can be reverted to the first document.
        let p2 = Publication { version: 8, ..p };
        let undo = store.publish(&p2).await.unwrap();
        assert_eq!(store.current_version("etl", "").await.unwrap(), Some(8));
        store.revert(undo).await.unwrap();
        assert_eq!(store.current_version("etl", "").await.unwrap(), Some(7));

        // A symlink planted in place of the secret is not followed.
        let elsewhere = dir.path().join("elsewhere.json");
        fs::write(&elsewhere, b"{}").unwrap();
        fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
        assert!(
            store.publish(&p2).await.is_err(),
            "a symlinked target is refused"
        );
        assert_eq!(
            fs::read(&elsewhere).unwrap(),
            b"{}",
            "the symlink's target is untouched"
        );
    }
}
