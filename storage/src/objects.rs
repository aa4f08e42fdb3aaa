//! Object storage for model artifacts (and, with the S3 backend, archives and snapshots).
//! Keys are relative slash-separated paths; a put is atomic (readers see all or nothing).

use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;

use crate::error::{Result, StorageError};

#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()>;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Keys under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Whether the backing service answers (`Err` says why not).
    async fn health(&self) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// Objects as files under a directory.
pub struct LocalObjectStore {
    root: PathBuf,
}

impl LocalObjectStore {
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(Self { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        let rel = Path::new(key);
        if key.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(StorageError::Corrupt(format!("invalid object key {key:?}")));
        }
        Ok(self.root.join(rel))
    }
}

#[async_trait]
impl ObjectStore for LocalObjectStore {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.path(key)?;
        tokio::task::spawn_blocking(move || -> Result<()> {
            let dir = path
                .parent()
                .ok_or_else(|| StorageError::Corrupt("object key has no parent".into()))?;
            std::fs::create_dir_all(dir)?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &bytes)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageError::Io(std::io::Error::other(e)))?
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match tokio::fs::read(self.path(key)?).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut keys = Vec::new();
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                for entry in entries {
                    let path = entry?.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if path.extension().is_none_or(|e| e != "tmp")
                        && let Ok(rel) = path.strip_prefix(&root)
                    {
                        let key = rel.to_string_lossy().replace('\\', "/");
                        if key.starts_with(&prefix) {
                            keys.push(key);
                        }
                    }
                }
            }
            keys.sort();
            Ok(keys)
        })
        .await
        .map_err(|e| StorageError::Io(std::io::Error::other(e)))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_and_reject_escapes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalObjectStore::new(dir.path()).expect("store");
        store
            .put("models/v1/meta.json", b"{}".to_vec())
            .await
            .expect("put");
        store
            .put("models/v2/meta.json", b"[]".to_vec())
            .await
            .expect("put");
        assert_eq!(
            store
                .get("models/v2/meta.json")
                .await
                .expect("get")
                .as_deref(),
            Some(&b"[]"[..])
        );
        assert!(
            store
                .get("models/v3/meta.json")
                .await
                .expect("get")
                .is_none()
        );
        assert_eq!(store.list("models/").await.expect("list").len(), 2);
        assert!(store.put("../escape", vec![]).await.is_err());
    }
}
