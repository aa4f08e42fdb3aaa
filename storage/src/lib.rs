//! Storage behind traits: the event log, session state, the catalog, the recommendation cache
//! and the object store. Each concern is one trait with an embedded implementation and, where
//! production wants a server, a real one (PostgreSQL catalog, Redis cache tier, S3 objects);
//! [`backends`] picks one per concern from its configured URL.
//!
//! This is the only crate that links RocksDB, and no RocksDB type crosses its API; `common`,
//! `models` and `cluster` build and test without waiting on the RocksDB C++ build.

pub mod archive;
pub mod backends;
pub mod cache;
pub mod catalog;
pub mod changelog;
pub mod db;
pub mod error;
pub mod log;
pub mod objects;
pub mod pg_catalog;
pub mod pii;
pub mod redis_cache;
pub mod s3;
pub mod sessions;
pub mod snapshot;

pub use cache::{MemoryCache, RecCache};
pub use catalog::{Catalog, CatalogView, RocksCatalog};
pub use changelog::{Change, ChangeRecord, Changelog};
pub use db::Db;
pub use error::StorageError;
pub use log::{ARCHIVE, INGEST};
pub use log::{AppendOutcome, EventHistory, EventLog, EventSink, FileEventLog, Record};
pub use objects::{LocalObjectStore, ObjectStore};
pub use pg_catalog::PgCatalog;
pub use redis_cache::TieredCache;
pub use s3::S3ObjectStore;
pub use sessions::{RocksSessionStore, SessionStore, Tombstone};
