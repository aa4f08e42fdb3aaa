//! The operator part of the facade: the live actor tree and actions on its actors, readiness
//! and dependency probes, the console's snapshot, and archiving on demand. Nothing here is on
//! a user's request path.

use std::sync::LazyLock;
use std::time::Duration;

use actors::archiver::{ArchiveRun, ArchiverMsg};
use actors::kafka_bridge::{BridgeObs, Role};
use actors::obs::Observable;
use actors::session_manager::SessionManagerMsg;
use actors::snapshotter::SnapshotMsg;
use actors::{CALL_TIMEOUT, call, mailbox, slot_get};
use common::ApiError;
use prometheus::{IntGaugeVec, register_int_gauge_vec};
use ractor::ActorRef;
use serde::Serialize;
use storage::snapshot::Manifest;

use crate::supervisor::SupervisorMsg;

use super::Node;

static DEPENDENCY_UP: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "streamrec_dependency_up",
        "1 if the dependency (events, catalog, cache, objects) answered the node's last probe, 0 \
         if not. Set only when the node probes: on GET /readyz (at most once per \
         server.readyz_cache_ttl), which an orchestrator's readiness probe calls every few \
         seconds; absent before the first probe, and as old as the last one without /readyz \
         traffic.",
        &["dependency"]
    )
    .expect("metric registers once")
});

// `GET /readyz`: what is up and what is not.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// The node can serve: a model is loaded, sessions run and none of its partitions is still
    /// being restored. A dependency being down makes the node degraded (see `dependencies`),
    /// not unready: it keeps serving around it.
    pub ready: bool,
    pub model_loaded: bool,
    pub model_workers: usize,
    pub sessions: bool,
    /// Partitions the group gave this node whose state is still being restored (a cluster).
    pub restoring: usize,
    /// `up`, or `down: <why>`, for `events`, `catalog`, `cache` and `objects`.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub dependencies: std::collections::BTreeMap<&'static str, String>,
}

impl Node {
    /// Archives the event log to the object store now (it also runs every
    /// `objects.archive_interval`).
    pub async fn archive_now(&self) -> Result<ArchiveRun, ApiError> {
        let archiver = slot_get(&self.archiver, "archiver")?;
        call(
            &archiver,
            "archiver",
            |reply| ArchiverMsg::Run(Some(reply)),
            Duration::from_secs(600),
        )
        .await
    }

    /// Takes a snapshot of the node's database now (one is also taken every
    /// `objects.snapshot_interval`).
    pub async fn snapshot_now(&self) -> Result<Manifest, ApiError> {
        let snapshotter = slot_get(&self.snapshotter, "snapshotter")?;
        call(
            &snapshotter,
            "snapshotter",
            |reply| SnapshotMsg::Run(Some(reply)),
            Duration::from_secs(3600),
        )
        .await
    }

    /// This node's complete snapshots in the object store, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<Manifest>, ApiError> {
        storage::snapshot::list(
            self.services.registry.objects(),
            self.services.cluster.node_id(),
        )
        .await
        .map_err(ApiError::from)
    }

    /// What the console shows, in one JSON value: the tree, the models, ingestion per partition,
    /// the cache and the cluster's shard map.
    pub async fn snapshot(&self) -> serde_json::Value {
        let log = &self.services.log;
        let partitions: Vec<serde_json::Value> = (0..log.num_partitions())
            .map(|p| {
                let end = *log.high_watermark(p).borrow();
                let committed = log.committed(storage::INGEST, p).unwrap_or(0);
                serde_json::json!({"partition": p, "committed": committed, "lag": end.saturating_sub(committed)})
            })
            .collect();
        let events: u64 = partitions
            .iter()
            .filter_map(|p| p["committed"].as_u64())
            .sum();
        let lag: u64 = partitions.iter().filter_map(|p| p["lag"].as_u64()).sum();
        let tree = self.actors(200);
        // Every bridge's: bad catalogue and transaction messages are dead letters too.
        let dead_letters: u64 = Role::ALL
            .iter()
            .flat_map(|role| self.observed::<BridgeObs>(role.kind()))
            .map(|bridge| bridge.num_dead_letters)
            .sum();
        let (hits, misses) = storage::cache::lookup_totals();
        serde_json::json!({
            "tree": tree,
            "models": self.models().await,
            "ingest": {
                "events": events,
                "lag": lag,
                "dead_letters": dead_letters,
                "partitions": partitions,
            },
            "cache": {"hits": hits, "misses": misses},
            "cluster": self.cluster(),
        })
    }

    /// The cluster's shard map as this node sees it (`GET /v1/admin/cluster`).
    pub fn cluster(&self) -> cluster::View {
        self.services.cluster.view()
    }

    /// The typed observable state of every actor of `kind` in the tree (see [`actors::obs`]).
    pub fn observed<T: Observable>(&self, kind: &str) -> Vec<T> {
        self.services.obs.all(&self.root.get_cell(), kind)
    }

    /// One actor's snapshot by id.
    pub fn actor(&self, id: &str) -> Result<serde_json::Value, ApiError> {
        let obs = &self.services.obs;
        let (cell, _) = obs
            .find(&self.root.get_cell(), id)
            .ok_or_else(|| ApiError::not_found(format!("no actor {id}")))?;
        Ok(obs.describe(&cell))
    }

    /// An operator action on a live actor:
    /// - `restart`: its supervisor stops it and starts it again from its spec (children of a
    ///   supervisor only);
    /// - `stop`: it stops and stays stopped (its supervisor records the exit; the root cannot be
    ///   stopped this way);
    /// - `passivate`: a session writes its state out and stops; the next message wakes it.
    pub async fn act_on_actor(&self, id: &str, action: &str) -> Result<(), ApiError> {
        let action = match action {
            "restart" => ActorAction::Restart,
            "stop" => ActorAction::Stop,
            "passivate" => ActorAction::Passivate,
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown action {other:?}; use restart, stop or passivate"
                )));
            }
        };
        let obs = &self.services.obs;
        let root = self.root.get_cell();
        let (cell, parent) = obs
            .find(&root, id)
            .ok_or_else(|| ApiError::not_found(format!("no actor {id}")))?;
        let conflict = |m: String| ApiError::new(common::ErrorCode::Conflict, m);
        tracing::info!(
            actor = id,
            action = ?action,
            kind = obs.kind(&cell),
            "operator action"
        );
        match action {
            ActorAction::Restart => {
                let parent = parent
                    .filter(|p| obs.kind(p).ends_with("supervisor"))
                    .ok_or_else(|| conflict(format!("{id} has no supervisor to restart it")))?;
                let name = obs
                    .label_of(&cell)
                    .ok_or_else(|| conflict(format!("{id} has no name in its supervisor")))?;
                let supervisor: ActorRef<SupervisorMsg> = parent.into();
                match mailbox::ask(
                    &supervisor,
                    |reply| SupervisorMsg::Restart(name, reply),
                    Some(CALL_TIMEOUT),
                )
                .await
                {
                    Ok(ractor::rpc::CallResult::Success(Ok(()))) => Ok(()),
                    Ok(ractor::rpc::CallResult::Success(Err(e))) => Err(conflict(e)),
                    _ => Err(ApiError::unavailable("the supervisor did not answer")),
                }
            }
            ActorAction::Stop => {
                if parent.is_none() {
                    return Err(conflict(
                        "the root supervisor stops only with the node".into(),
                    ));
                }
                cell.stop(Some("stopped by operator".into()));
                Ok(())
            }
            ActorAction::Passivate => {
                if obs.kind(&cell) != "session" {
                    return Err(conflict(format!("{id} is not a session")));
                }
                // Through the manager, which forgets the session first: a request right after
                // this one starts a new session rather than reaching the stopping one.
                let user_id = obs
                    .label_of(&cell)
                    .ok_or_else(|| conflict(format!("{id} is stopping")))?;
                let manager = slot_get(&self.users.sessions, "session manager")?;
                let passivated = mailbox::ask(
                    &manager,
                    |reply| SessionManagerMsg::Passivate { user_id, reply },
                    Some(CALL_TIMEOUT),
                )
                .await
                .map_err(|_| ApiError::unavailable("the session manager is restarting"))?;
                match passivated {
                    ractor::rpc::CallResult::Success(true) => Ok(()),
                    ractor::rpc::CallResult::Success(false) => {
                        Err(conflict(format!("{id} is stopping")))
                    }
                    _ => Err(ApiError::unavailable("the session manager did not answer")),
                }
            }
        }
    }

    /// The live supervision tree as JSON.
    pub fn actors(&self, max_children: usize) -> serde_json::Value {
        self.services.obs.tree(&self.root.get_cell(), max_children)
    }

    pub async fn readiness(&self) -> Readiness {
        let dependencies = self.probe_dependencies().await;
        self.readiness_with(dependencies)
    }

    /// Each dependency's health, probed now (at most a second each, all at once): `up`, or
    /// `down: <why>`, for `events`, `catalog`, `cache` and `objects`; also sets
    /// `streamrec_dependency_up` for each.
    pub async fn probe_dependencies(&self) -> std::collections::BTreeMap<&'static str, String> {
        let s = &self.services;
        let (events, catalog, cache, objects) = tokio::join!(
            probe(s.sink.health()),
            probe(s.catalog.store().health()),
            probe(s.cache.health()),
            probe(s.registry.health()),
        );
        let dependencies: std::collections::BTreeMap<&'static str, String> = [
            ("events", events),
            ("catalog", catalog),
            ("cache", cache),
            ("objects", objects),
        ]
        .into();
        for (name, health) in &dependencies {
            DEPENDENCY_UP
                .with_label_values(&[*name])
                .set(i64::from(health == "up"));
        }
        dependencies
    }

    /// Readiness now, with dependencies probed by the caller (`/readyz` reuses recent probes).
    pub fn readiness_with(
        &self,
        dependencies: std::collections::BTreeMap<&'static str, String>,
    ) -> Readiness {
        let model_loaded = self.services.registry.active().is_some();
        let model_workers = self.services.models.workers().len();
        let sessions = self.users.sessions_running();
        let restoring = self
            .services
            .cluster
            .status(false)
            .partitions
            .values()
            .filter(|state| **state == cluster::PartitionState::Restoring)
            .count();
        let ready = model_loaded && model_workers > 0 && sessions && restoring == 0;
        Readiness {
            ready,
            model_loaded,
            model_workers,
            sessions,
            restoring,
            dependencies,
        }
    }
}

/// What an operator can do to a live actor.
#[derive(Clone, Copy, Debug)]
enum ActorAction {
    Restart,
    Stop,
    Passivate,
}

/// `up`, or `down: <why>`, within a second.
async fn probe(check: impl std::future::Future<Output = Result<(), String>>) -> String {
    match tokio::time::timeout(Duration::from_secs(1), check).await {
        Ok(Ok(())) => "up".to_owned(),
        Ok(Err(why)) => format!("down: {why}"),
        Err(_) => "down: no answer within 1s".to_owned(),
    }
}
