//! Blobs as files under a directory: `<root>/<k0>/<k0k1>/<key>`, written to a temporary
//! name and renamed, so a crash never leaves a half-written pack under its real name.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{check_key, Storage, StorageError, StorageResult};

pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub fn open(root: &Path) -> StorageResult<LocalStorage> {
        std::fs::create_dir_all(root).map_err(|source| StorageError::Io {
            key: root.display().to_string(),
            source,
        })?;
        Ok(LocalStorage {
            root: root.to_path_buf(),
        })
    }

    fn path_of(&self, key: &str) -> StorageResult<PathBuf> {
        check_key(key)?;
        let a = &key[..1];
        let b = &key[..2.min(key.len())];
        Ok(self.root.join(a).join(b).join(key))
    }
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
        tokio::task::spawn_blocking(move || {
            let dir = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(io(&key))?;
            let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
            let res = std::fs::write(&tmp, &data).and_then(|_| std::fs::rename(&tmp, &path));
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

    async fn check(&self) -> StorageResult<()> {
        let probe = self.root.join(".ready-probe");
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
        let s = LocalStorage::open(dir.path()).unwrap();
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

    #[tokio::test]
    async fn traversal_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::open(dir.path()).unwrap();
        for key in ["../x", "a/b", "", ".hidden", "x\0y"] {
            assert!(
                matches!(s.put(key, Bytes::new()).await, Err(StorageError::BadKey(_))),
                "{key:?}"
            );
        }
    }
}
