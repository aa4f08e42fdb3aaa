//! Snapshots of a node's RocksDB in the object store, for disaster recovery: sessions, the
//! embedded catalogue, profiles, erasures, the id sets and the offsets they cover, all from one
//! RocksDB checkpoint, so the copy is consistent whatever the node was doing.
//!
//! A snapshot is the checkpoint's files under `snapshots/node=<id>/<stamp>/db/`, then
//! `snapshots/node=<id>/<stamp>/manifest.json`, written last: a snapshot without its manifest
//! (the node died while uploading) is ignored. `<stamp>` is the UTC time it was taken
//! (`YYYYMMDDTHHMMSSmmmZ`), so keys sort by age.
//!
//! Restoring ([`fetch`]) writes the files back as a node's `db/` directory; the offsets inside
//! say where the node's ingest had applied up to, and what came after is replayed from the
//! archive (the embedded log, see [`rebuild_partition`](crate::log::rebuild_partition)) or
//! from the sessions changelog (Kafka).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::error::{Result, StorageError};
use crate::log::{INGEST, committed_in};
use crate::objects::ObjectStore;

const PREFIX: &str = "snapshots/";
const MANIFEST: &str = "manifest.json";

/// What a snapshot holds; its `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = SnapshotManifest)]
pub struct Manifest {
    pub node_id: String,
    /// The key prefix of its objects, `snapshots/node=<id>/<stamp>/`.
    pub key: String,
    /// When it was taken (epoch ms).
    pub created_at: i64,
    /// Per partition of the log, the offset up to which ingest had applied events when the
    /// snapshot began: it covers at least these. (JSON keys are the partitions as strings.)
    #[schema(value_type = BTreeMap<String, u64>)]
    pub ingest_offsets: BTreeMap<u32, u64>,
    pub files: Vec<SnapshotFile>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotFile {
    pub name: String,
    pub bytes: u64,
}

impl Manifest {
    /// Bytes of all its files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// Takes snapshots of one node's database.
pub struct Snapshots {
    db: std::sync::Arc<Db>,
    objects: std::sync::Arc<dyn ObjectStore>,
    node_id: String,
    /// Where checkpoints are made before upload: on the database's file system, so that table
    /// files are hard links and not copies.
    scratch: PathBuf,
    num_partitions: u32,
}

impl Snapshots {
    pub fn new(
        db: std::sync::Arc<Db>,
        objects: std::sync::Arc<dyn ObjectStore>,
        node_id: &str,
        scratch: PathBuf,
        num_partitions: u32,
    ) -> Self {
        Self {
            db,
            objects,
            node_id: node_id.to_owned(),
            scratch,
            num_partitions,
        }
    }

    /// Takes one snapshot and uploads it; returns its manifest.
    pub async fn take(&self) -> Result<Manifest> {
        let created_at = common::now_millis();
        let key = format!("{}{}/", node_prefix(&self.node_id), stamp(created_at));
        let ingest_offsets = (0..self.num_partitions)
            .map(|p| Ok((p, committed_in(&self.db, INGEST, p)?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        let dir = self.scratch.join(format!("snapshot-{created_at}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&self.scratch)?;
        let (db, checkpoint) = (self.db.clone(), dir.clone());
        tokio::task::spawn_blocking(move || db.checkpoint(&checkpoint))
            .await
            .map_err(|e| StorageError::Backend(e.to_string()))??;
        let uploaded = self.upload(&dir, &key).await;
        let _ = std::fs::remove_dir_all(&dir);
        let files = uploaded?;
        let manifest = Manifest {
            node_id: self.node_id.clone(),
            key,
            created_at,
            ingest_offsets,
            files,
        };
        self.objects
            .put(
                &format!("{}{MANIFEST}", manifest.key),
                serde_json::to_vec_pretty(&manifest)?,
            )
            .await?;
        Ok(manifest)
    }

    async fn upload(&self, dir: &Path, key: &str) -> Result<Vec<SnapshotFile>> {
        let mut files = Vec::new();
        let mut names: Vec<String> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        for name in names {
            let bytes = tokio::fs::read(dir.join(&name)).await?;
            let size = bytes.len() as u64;
            self.objects.put(&format!("{key}db/{name}"), bytes).await?;
            files.push(SnapshotFile { name, bytes: size });
        }
        Ok(files)
    }
}

fn node_prefix(node_id: &str) -> String {
    format!("{PREFIX}node={node_id}/")
}

/// `YYYYMMDDTHHMMSSmmmZ` (UTC) of an epoch-millisecond time.
fn stamp(ms: i64) -> String {
    let (y, m, d, rest) = common::utc(ms);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        ms.rem_euclid(1000)
    )
}

/// The complete snapshots of `node_id`, oldest first.
pub async fn list(objects: &dyn ObjectStore, node_id: &str) -> Result<Vec<Manifest>> {
    let mut manifests = Vec::new();
    for key in objects.list(&node_prefix(node_id)).await? {
        if !key.ends_with(MANIFEST) {
            continue;
        }
        if let Some(bytes) = objects.get(&key).await? {
            manifests.push(serde_json::from_slice::<Manifest>(&bytes)?);
        }
    }
    manifests.sort_by_key(|m| m.created_at);
    Ok(manifests)
}

/// The newest snapshot of `node_id` taken at or before `at` (epoch ms).
pub async fn newest(objects: &dyn ObjectStore, node_id: &str, at: i64) -> Result<Option<Manifest>> {
    Ok(list(objects, node_id)
        .await?
        .into_iter()
        .rev()
        .find(|m| m.created_at <= at))
}

/// Writes a snapshot's files into `db_dir`, which must be absent or empty; the database
/// opened there is the node's as it was when the snapshot was taken.
pub async fn fetch(objects: &dyn ObjectStore, manifest: &Manifest, db_dir: &Path) -> Result<()> {
    if db_dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return Err(StorageError::Corrupt(format!(
            "{} is not empty: a restore writes only into an empty data dir",
            db_dir.display()
        )));
    }
    tokio::fs::create_dir_all(db_dir).await?;
    for file in &manifest.files {
        let key = format!("{}db/{}", manifest.key, file.name);
        let bytes = objects
            .get(&key)
            .await?
            .ok_or_else(|| StorageError::Corrupt(format!("snapshot object {key} is missing")))?;
        if bytes.len() as u64 != file.bytes {
            return Err(StorageError::Corrupt(format!(
                "snapshot object {key} has {} bytes, its manifest says {}",
                bytes.len(),
                file.bytes
            )));
        }
        tokio::fs::write(db_dir.join(&file.name), bytes).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::LocalObjectStore;
    use crate::db::Cf;

    #[test]
    fn stamps_sort_as_time_does() {
        assert_eq!(stamp(0), "19700101T000000000Z");
        assert_eq!(stamp(1_765_132_245_123), "20251207T183045123Z");
        assert!(stamp(1_000) < stamp(60_000) && stamp(60_000) < stamp(86_400_000));
    }

    #[tokio::test]
    async fn a_snapshot_restores_the_database_as_it_was_when_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(Db::open(&dir.path().join("db")).expect("db"));
        let objects: Arc<dyn ObjectStore> =
            Arc::new(LocalObjectStore::new(dir.path().join("objects")).expect("objects"));
        db.put(Cf::Sessions, b"alice", b"before").expect("put");
        crate::log::commit_in(&db, INGEST, 1, 42).expect("commit");
        let snapshots = Snapshots::new(
            db.clone(),
            objects.clone(),
            "n1",
            dir.path().join("scratch"),
            2,
        );
        let taken = snapshots.take().await.expect("snapshot");
        assert_eq!(taken.ingest_offsets, BTreeMap::from([(0, 0), (1, 42)]));
        assert!(taken.bytes() > 0);
        // Later writes are not in it.
        db.put(Cf::Sessions, b"alice", b"after").expect("put");
        db.put(Cf::Sessions, b"bob", b"later").expect("put");

        let found = newest(objects.as_ref(), "n1", common::now_millis())
            .await
            .expect("list")
            .expect("a snapshot");
        assert_eq!(found, taken);
        assert!(
            newest(objects.as_ref(), "n1", taken.created_at - 1)
                .await
                .expect("list")
                .is_none(),
            "none before the first"
        );
        assert!(list(objects.as_ref(), "n2").await.expect("list").is_empty());

        let restored_dir = dir.path().join("restored");
        fetch(objects.as_ref(), &found, &restored_dir)
            .await
            .expect("fetch");
        let restored = Db::open(&restored_dir).expect("opens");
        assert_eq!(
            restored
                .get(Cf::Sessions, b"alice")
                .expect("get")
                .as_deref(),
            Some(&b"before"[..])
        );
        assert!(restored.get(Cf::Sessions, b"bob").expect("get").is_none());
        assert_eq!(committed_in(&restored, INGEST, 1).expect("offset"), 42);
        // Never over a database that is there.
        assert!(
            fetch(objects.as_ref(), &found, &restored_dir)
                .await
                .is_err()
        );
    }
}
