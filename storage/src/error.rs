//! Storage failures. Callers map them to `unavailable` (a remote store that fails), `internal`
//! (a local store that fails, corruption, bugs) or `invalid_argument` (a store that refuses the
//! data itself).
//!
//! A database refusing a value is the client's input, not an outage: retrying it can never
//! succeed, so calling it `unavailable` would make a Kafka consumer replay the same message for
//! ever. PostgreSQL says which it is by the class of its SQLSTATE: `22` (data exception: an
//! invalid byte sequence such as `\0`, a value out of range, bad JSON text), `23` (integrity
//! constraint violation) and `54` (program limit exceeded: a value or statement too large or
//! complex) are the data's fault; every other failure may pass and is `unavailable`.

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
    Sql(sqlx::Error),
    /// The database refused the data: SQLSTATE `sqlstate` (see the module doc).
    #[error("database refused the data (SQLSTATE {sqlstate}): {message}")]
    InvalidData { sqlstate: String, message: String },
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// SQLSTATE classes that mean the data, not the database, is at fault.
const DATA_ERROR_CLASSES: [&str; 3] = ["22", "23", "54"];

impl From<sqlx::Error> for StorageError {
    fn from(error: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &error
            && let Some(code) = db.code()
            && DATA_ERROR_CLASSES
                .iter()
                .any(|class| code.starts_with(class))
        {
            return StorageError::InvalidData {
                sqlstate: code.into_owned(),
                message: db.message().to_owned(),
            };
        }
        StorageError::Sql(error)
    }
}

impl StorageError {
    /// Whether the store refused the data itself: retrying the same write cannot succeed.
    pub fn is_invalid_data(&self) -> bool {
        matches!(self, StorageError::InvalidData { .. })
    }
}

/// A remote store that fails (PostgreSQL, Redis, S3) is `unavailable`: retry later. A local one
/// that fails (RocksDB, the disk, corrupt data) is an internal error. Data a database refuses is
/// `invalid_argument`, named by its SQLSTATE only: the database's message may quote the value.
impl From<StorageError> for common::ApiError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::InvalidData { sqlstate, .. } => {
                tracing::debug!(%sqlstate, "store refused the data");
                common::ApiError::invalid(format!(
                    "the store refused a value as invalid (SQLSTATE {sqlstate})"
                ))
            }
            StorageError::Sql(_) | StorageError::Backend(_) => {
                tracing::warn!(%error, "store unavailable");
                common::ApiError::unavailable("a backing store is unavailable; retry later")
            }
            other => common::ApiError::internal(other),
        }
    }
}
