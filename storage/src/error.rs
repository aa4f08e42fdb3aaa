//! Storage failures. Callers map them to `unavailable` (I/O) or `internal` (corruption, bugs).

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("encoding: {0}")]
    Encoding(#[from] serde_json::Error),
    #[error("store closed")]
    Closed,
    #[error("{0}")]
    Backend(String),
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A remote store that fails (PostgreSQL, Redis, S3) is `unavailable`: retry later. A local one
/// that fails (RocksDB, the disk, corrupt data) is an internal error.
impl From<StorageError> for common::ApiError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::Sql(_) | StorageError::Backend(_) => {
                tracing::warn!(%error, "store unavailable");
                common::ApiError::unavailable("a backing store is unavailable; retry later")
            }
            other => common::ApiError::internal(other),
        }
    }
}
