//! The configuration of a test node: everything default except what keeps it small and quick to
//! start. In-process tests take [`config`]; end-to-end tests run the binary with [`env`], the same
//! settings as environment variables.

use std::path::Path;

use common::Config;

/// Partitions of a test node: enough to spread a test's users, few enough to start quickly.
pub const NUM_PARTITIONS: u32 = 4;
/// Factors per user and item of a test node's model.
pub const MODEL_DIM: usize = 8;
/// ALS iterations of a test node's training runs.
pub const MODEL_ITERATIONS: usize = 6;

/// A test node keeping its data in `dir`.
pub fn config(dir: &Path) -> Config {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.events.num_partitions = NUM_PARTITIONS;
    config.model.dim = MODEL_DIM;
    config.model.iterations = MODEL_ITERATIONS;
    config
}

/// A smaller node, for tests of the edges (authentication, sockets, probes) in which the model
/// hardly matters: 2 partitions, 4 factors, 2 iterations.
pub fn tiny_config(dir: &Path) -> Config {
    let mut config = config(dir);
    config.events.num_partitions = 2;
    config.model.dim = 4;
    config.model.iterations = 2;
    config
}

/// [`config`]'s settings as `STREAMREC__*` environment variables, for a node run as a process.
pub fn env() -> [(&'static str, String); 3] {
    [
        (
            "STREAMREC__EVENTS__NUM_PARTITIONS",
            NUM_PARTITIONS.to_string(),
        ),
        ("STREAMREC__MODEL__DIM", MODEL_DIM.to_string()),
        ("STREAMREC__MODEL__ITERATIONS", MODEL_ITERATIONS.to_string()),
    ]
}
