//! `/readyz` without amplification. The probe is public and each run costs a database query,
//! an object-store request, a cache round trip and (with Kafka) a broker metadata fetch; so the
//! dependency probes run at most once per `server.readyz_cache_ttl`, callers that arrive while a
//! probe runs wait for it and share its result, and only operators (`Action::AdminRead` in the
//! policy table) see why a dependency is down. Everyone else sees each dependency as `up` or
//! `down`: enough for a load balancer or an orchestrator, nothing about the infrastructure
//! behind the node. The node's own state (model loaded, sessions running) is read fresh on
//! every call: it costs nothing.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{IntCounterVec, register_int_counter_vec};
use supervisors::Node;
use tokio::time::Instant;

use crate::policy::{Action, Principal, permits};

static PROBES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "streamrec_readyz_probes_total",
        "Dependency probes run for /readyz, by dependency.",
        &["dependency"]
    )
    .expect("metric registers once")
});

type Dependencies = BTreeMap<&'static str, String>;

/// The last probe of the dependencies, shared by every `/readyz` call of a router.
pub struct Probes {
    ttl: Duration,
    last: tokio::sync::Mutex<Option<(Instant, Dependencies)>>,
}

impl Probes {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Each dependency's health, probed at most once per TTL. The lock is held across the probe
    /// on purpose: concurrent callers wait for the one probe in flight instead of starting
    /// their own.
    pub async fn dependencies(&self, node: &Node) -> Dependencies {
        let mut last = self.last.lock().await;
        if let Some((at, dependencies)) = &*last
            && at.elapsed() < self.ttl
        {
            return dependencies.clone();
        }
        let dependencies = node.probe_dependencies().await;
        for name in dependencies.keys() {
            PROBES.with_label_values(&[name]).inc();
        }
        *last = Some((Instant::now(), dependencies.clone()));
        dependencies
    }
}

/// What `principal` may see of the dependencies: everything for operators, `up`/`down` for
/// anyone else.
pub fn visible_to(principal: &Principal, dependencies: Dependencies) -> Dependencies {
    if permits(principal, &Action::AdminRead) {
        return dependencies;
    }
    dependencies
        .into_iter()
        .map(|(name, health)| {
            let up = if health == "up" { "up" } else { "down" };
            (name, up.to_owned())
        })
        .collect()
}
