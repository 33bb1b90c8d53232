//! Blobs as files under a directory: `<root>/<k0>/<k0k1>/<key>`. Each is written under a
//! temporary name in `<root>/.incoming` and renamed into place, so a crash never leaves a
//! half-written pack under its real name; leftovers of a crash are swept at start. Writes
//! bypass the page cache where the filesystem allows (`super::direct`).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::{check_key, Storage, StorageError, StorageResult};

/// Temporary files older than this are a crashed writer's: another replica sharing the
/// directory may be writing the younger ones right now.
const STALE_TEMP: Duration = Duration::from_secs(3600);

pub struct LocalStorage {
    root: PathBuf,
    incoming: PathBuf,
    /// Whether the filesystem takes `O_DIRECT` writes (see `direct`).
    direct: bool,
}

impl LocalStorage {
    /// Opens (creating) the directory; `direct_io` asks for `O_DIRECT` writes, used only if
    /// the filesystem takes them.
    pub fn open(root: &Path, direct_io: bool) -> StorageResult<LocalStorage> {
        let incoming = root.join(".incoming");
        std::fs::create_dir_all(&incoming).map_err(|source| StorageError::Io {
            key: incoming.display().to_string(),
            source,
        })?;
        let swept = sweep_stale(&incoming, SystemTime::now(), STALE_TEMP);
        if swept > 0 {
            tracing::info!(
                swept,
                "removed temporary files left by an interrupted write"
            );
        }
        let direct = direct_io && super::direct::supported(&incoming);
        tracing::debug!(direct, "local storage opened");
        Ok(LocalStorage {
            root: root.to_path_buf(),
            incoming,
            direct,
        })
    }

    /// Whether writes bypass the page cache (asked for, and the filesystem takes it).
    pub fn uses_direct_io(&self) -> bool {
        self.direct
    }

    fn path_of(&self, key: &str) -> StorageResult<PathBuf> {
        check_key(key)?;
        let a = &key[..1];
        let b = &key[..2.min(key.len())];
        Ok(self.root.join(a).join(b).join(key))
    }
}

/// Removes files in `dir` last modified before `now - age`; returns how many.
fn sweep_stale(dir: &Path, now: SystemTime, age: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d > age))
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

fn io(key: &str) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| {
        if source.kind() == ErrorKind::NotFound {
            StorageError::NotFound(key.to_string())
        } else {
            StorageError::Io {
                key: key.to_string(),
                source,
            }
        }
    }
}

#[async_trait::async_trait]
impl Storage for LocalStorage {
    async fn put(&self, key: &str, data: Bytes) -> StorageResult<()> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        let incoming = self.incoming.clone();
        let direct = self.direct;
        tokio::task::spawn_blocking(move || {
            let dir = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(io(&key))?;
            let tmp = incoming.join(format!("{}.tmp", uuid::Uuid::new_v4()));
            let written = if direct {
                super::direct::write(&tmp, &data)
            } else {
                std::fs::write(&tmp, &data)
            };
            let res = written.and_then(|_| std::fs::rename(&tmp, &path));
            if res.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            res.map_err(io(&key))
        })
        .await
        .map_err(|e| StorageError::Unavailable(e.to_string()))?
    }

    async fn get(&self, key: &str) -> StorageResult<Bytes> {
        let path = self.path_of(key)?;
        let data = tokio::fs::read(&path).await.map_err(io(key))?;
        Ok(Bytes::from(data))
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> StorageResult<Bytes> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        let len = usize::try_from(len).map_err(|_| StorageError::BadKey(key.clone()))?;
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let file = std::fs::File::open(&path).map_err(io(&key))?;
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset).map_err(io(&key))?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(|e| StorageError::Unavailable(e.to_string()))?
    }

    async fn delete(&self, key: &str) -> StorageResult<()> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io(key)(e)),
            _ => Ok(()),
        }
    }

    async fn sweep_temporary(&self) -> usize {
        let incoming = self.incoming.clone();
        tokio::task::spawn_blocking(move || sweep_stale(&incoming, SystemTime::now(), STALE_TEMP))
            .await
            .unwrap_or(0)
    }

    async fn check(&self) -> StorageResult<()> {
        let probe = self.incoming.join(".ready-probe");
        tokio::fs::write(&probe, b"ok")
            .await
            .map_err(|e| StorageError::Unavailable(format!("{}: {e}", self.root.display())))?;
        let _ = tokio::fs::remove_file(&probe).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::open(dir.path(), true).unwrap();
        s.put("abc.chunk", Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert!(dir.path().join("a/ab/abc.chunk").exists());
        assert_eq!(&s.get("abc.chunk").await.unwrap()[..], b"hello");
        assert_eq!(&s.get_range("abc.chunk", 1, 3).await.unwrap()[..], b"ell");
        assert!(s.get_range("abc.chunk", 3, 3).await.is_err(), "short read");
        s.delete("abc.chunk").await.unwrap();
        assert!(matches!(
            s.get("abc.chunk").await,
            Err(StorageError::NotFound(_))
        ));
        s.delete("abc.chunk").await.unwrap();
    }

    #[test]
    fn only_stale_temporary_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old.tmp"), b"half").unwrap();
        std::fs::write(dir.path().join("young.tmp"), b"half").unwrap();
        let old = std::fs::File::options()
            .write(true)
            .open(dir.path().join("old.tmp"))
            .unwrap();
        old.set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
        assert_eq!(sweep_stale(dir.path(), SystemTime::now(), STALE_TEMP), 1);
        assert!(!dir.path().join("old.tmp").exists());
        assert!(dir.path().join("young.tmp").exists(), "a writer may own it");
    }

    #[tokio::test]
    async fn writes_leave_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::open(dir.path(), true).unwrap();
        s.put("abc.pack", Bytes::from_static(b"x")).await.unwrap();
        s.check().await.unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join(".incoming"))
                .unwrap()
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn traversal_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::open(dir.path(), true).unwrap();
        for key in ["../x", "a/b", "", ".hidden", "x\0y"] {
            assert!(
                matches!(s.put(key, Bytes::new()).await, Err(StorageError::BadKey(_))),
                "{key:?}"
            );
        }
    }
}
