//! What streamrec's tests share, written once: the configuration of a test node, polling with a
//! deadline instead of sleeping, the real servers `scripts/services.sh` starts (a fresh
//! PostgreSQL database per test), and fixtures for models and catalogs.
//!
//! A dev-dependency only (`publish = false`). It sits beside `storage` and `models` in the
//! dependency order, never above them: the unit tests of `actors` and `supervisors` use it, and
//! a testkit that depended on either would link a second, incompatible copy into their tests.

pub mod model;
mod node;
mod poll;
pub mod services;

pub use model::NullCatalog;
pub use node::{MODEL_DIM, MODEL_ITERATIONS, NUM_PARTITIONS, config, env, tiny_config};
pub use poll::{wait_for, wait_until};
pub use services::{fresh_database, test_env, unique};
