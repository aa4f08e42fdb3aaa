//! The shard map: this node's own partitions (exact, from the consumer group) and the other
//! members' (from their latest status), merged into one view.

use std::collections::{BTreeMap, HashMap};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::NodeId;

/// Where a partition stands on the node that owns it (or is about to).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionState {
    /// Serving: its sessions are applied and answered here.
    Active,
    /// Assigned here, its state still being restored; requests wait.
    Restoring,
    /// No owner known right now (a rebalance is under way); requests wait.
    Moving,
}

/// What one node says about itself on the status topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node_id: NodeId,
    /// Where other nodes reach it (`cluster.advertise`).
    pub address: String,
    /// The partitions it owns, with their state.
    pub partitions: BTreeMap<u32, PartitionState>,
    /// Bumped on every rebalance the node takes part in.
    pub generation: u64,
    /// When it said so (its clock, epoch ms).
    pub at_ms: i64,
    /// Set by a node leaving on purpose: its partitions are about to move.
    #[serde(default)]
    pub leaving: bool,
}

/// `GET /v1/admin/cluster`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct View {
    pub node_id: NodeId,
    pub generation: u64,
    pub members: Vec<Member>,
    pub partitions: Vec<PartitionView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub node_id: NodeId,
    pub address: String,
    pub partitions: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartitionView {
    pub partition: u32,
    pub owner: Option<NodeId>,
    pub state: PartitionState,
}

/// Where a request for a user goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// This node owns the user and serves it.
    Local,
    /// Another node owns the user.
    Remote { node_id: NodeId, address: String },
    /// Nobody can serve the user right now (restoring here, or moving): wait and ask again.
    Wait,
}

/// The partition of a user among `num_partitions`: Kafka's partitioner, as producers use.
pub fn partition_of(user_id: &str, num_partitions: u32) -> u32 {
    common::partition::partition_for(user_id, num_partitions)
}

/// One node's knowledge of the cluster. Cheap to read on every request.
pub struct Cluster {
    node_id: NodeId,
    address: String,
    num_partitions: u32,
    inner: RwLock<Inner>,
    /// Bumped on every change, so that a waiting request wakes up to route again.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct Inner {
    /// This node's partitions (exact: the consumer group told us).
    own: BTreeMap<u32, PartitionState>,
    generation: u64,
    /// Other members' latest status, and when this node received it (its own clock, so that
    /// expiry does not depend on clocks agreeing).
    others: HashMap<NodeId, (Status, std::time::Instant)>,
}

impl Cluster {
    pub fn new(node_id: NodeId, address: String, num_partitions: u32) -> Self {
        Self {
            node_id,
            address,
            num_partitions,
            inner: RwLock::default(),
            changed: watch::channel(0).0,
        }
    }

    /// A single node that owns every partition (the embedded log): everything routes here.
    pub fn single(node_id: NodeId, address: String, num_partitions: u32) -> Self {
        let cluster = Self::new(node_id, address, num_partitions);
        cluster.inner.write().own = (0..num_partitions)
            .map(|p| (p, PartitionState::Active))
            .collect();
        cluster
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn num_partitions(&self) -> u32 {
        self.num_partitions
    }

    /// The group gave this node `partitions`: they restore before they serve.
    pub fn assigned(&self, partitions: &[u32]) {
        self.update(|inner| {
            inner.generation += 1;
            for &p in partitions {
                inner.own.insert(p, PartitionState::Restoring);
            }
        });
    }

    /// `partition`'s state is restored: it serves here.
    pub fn activate(&self, partition: u32) {
        self.update(|inner| {
            if let Some(state) = inner.own.get_mut(&partition) {
                *state = PartitionState::Active;
            }
        });
    }

    /// The group took `partitions` away (after this node flushed and committed them).
    pub fn revoked(&self, partitions: &[u32]) {
        self.update(|inner| {
            inner.generation += 1;
            for p in partitions {
                inner.own.remove(p);
            }
        });
    }

    /// Whether this node serves `partition` now.
    pub fn is_active(&self, partition: u32) -> bool {
        self.inner.read().own.get(&partition) == Some(&PartitionState::Active)
    }

    /// Whether the group gave `partition` to this node (restoring or serving).
    pub fn holds(&self, partition: u32) -> bool {
        self.inner.read().own.contains_key(&partition)
    }

    /// Another live member that still says it holds `partition`, if any: a node assigned the
    /// partition waits for it to let go before restoring (see `actors::handoff`).
    pub fn claimed_elsewhere(&self, partition: u32) -> Option<NodeId> {
        owner_among_others(&self.inner.read(), partition).map(|s| s.node_id.clone())
    }

    /// This node's own status, as published on the status topic.
    pub fn status(&self, leaving: bool) -> Status {
        let inner = self.inner.read();
        Status {
            node_id: self.node_id.clone(),
            address: self.address.clone(),
            partitions: inner.own.clone(),
            generation: inner.generation,
            at_ms: common::now_millis(),
            leaving,
        }
    }

    /// Another member's status (this node's own, read back, is ignored).
    pub fn observe(&self, status: Status) {
        if status.node_id == self.node_id {
            return;
        }
        self.update(|inner| {
            inner
                .others
                .insert(status.node_id.clone(), (status, std::time::Instant::now()));
        });
    }

    /// Forgets members not heard from within `timeout`; returns how many.
    pub fn expire(&self, timeout: std::time::Duration) -> usize {
        let mut expired = 0;
        self.update(|inner| {
            let before = inner.others.len();
            inner
                .others
                .retain(|_, (status, seen)| !status.leaving && seen.elapsed() < timeout);
            expired = before - inner.others.len();
        });
        expired
    }

    /// Where a request for `user_id` goes now.
    pub fn route(&self, user_id: &str) -> Route {
        let partition = partition_of(user_id, self.num_partitions);
        let inner = self.inner.read();
        match inner.own.get(&partition) {
            Some(PartitionState::Active) => return Route::Local,
            Some(_) => return Route::Wait,
            None => {}
        }
        match owner_among_others(&inner, partition) {
            Some(status) => Route::Remote {
                node_id: status.node_id.clone(),
                address: status.address.clone(),
            },
            None => Route::Wait,
        }
    }

    /// The shard map as this node sees it.
    pub fn view(&self) -> View {
        let inner = self.inner.read();
        let mut members = vec![Member {
            node_id: self.node_id.clone(),
            address: self.address.clone(),
            partitions: inner.own.keys().copied().collect(),
        }];
        members.extend(inner.others.values().map(|(s, _)| Member {
            node_id: s.node_id.clone(),
            address: s.address.clone(),
            partitions: s.partitions.keys().copied().collect(),
        }));
        members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let partitions = (0..self.num_partitions)
            .map(|partition| {
                let (owner, state) = match inner.own.get(&partition) {
                    Some(state) => (Some(self.node_id.clone()), *state),
                    None => match owner_among_others(&inner, partition) {
                        Some(s) => (Some(s.node_id.clone()), s.partitions[&partition]),
                        None => (None, PartitionState::Moving),
                    },
                };
                PartitionView {
                    partition,
                    owner,
                    state,
                }
            })
            .collect();
        View {
            node_id: self.node_id.clone(),
            generation: inner.generation,
            members,
            partitions,
        }
    }

    /// Resolves at the next change of the map (or at once if one happened since `seen`).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn update(&self, f: impl FnOnce(&mut Inner)) {
        f(&mut self.inner.write());
        self.changed.send_modify(|n| *n += 1);
    }
}

/// The other member that claims `partition`; when two do (a hand-off seen half-way), the one
/// that said so last.
fn owner_among_others(inner: &Inner, partition: u32) -> Option<&Status> {
    inner
        .others
        .values()
        .map(|(s, _)| s)
        .filter(|s| s.partitions.contains_key(&partition))
        .max_by_key(|s| (s.partitions[&partition] == PartitionState::Active, s.at_ms))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn status(node: &str, partitions: &[(u32, PartitionState)], at_ms: i64) -> Status {
        Status {
            node_id: node.into(),
            address: format!("{node}:8080"),
            partitions: partitions.iter().copied().collect(),
            generation: 1,
            at_ms,
            leaving: false,
        }
    }

    /// A user of partition `p` among `n`.
    fn user_in(p: u32, n: u32) -> String {
        (0..)
            .map(|i| format!("user{i}"))
            .find(|u| partition_of(u, n) == p)
            .expect("some user lands in every partition")
    }

    #[test]
    fn a_partition_restoring_here_waits_and_one_active_here_is_local() {
        let cluster = Cluster::new("a".into(), "a:8080".into(), 4);
        let user = user_in(2, 4);
        assert_eq!(cluster.route(&user), Route::Wait, "nobody owns it yet");
        cluster.assigned(&[2]);
        assert_eq!(cluster.route(&user), Route::Wait, "restoring");
        cluster.activate(2);
        assert_eq!(cluster.route(&user), Route::Local);
        cluster.revoked(&[2]);
        assert_eq!(cluster.route(&user), Route::Wait);
    }

    #[test]
    fn a_stale_map_routes_to_the_latest_claim_and_never_to_an_expired_member() {
        let cluster = Cluster::new("a".into(), "a:8080".into(), 4);
        let user = user_in(1, 4);
        // b held partition 1; c says, later, that it is restoring it: the hand-off seen half-way.
        cluster.observe(status("b", &[(1, PartitionState::Active)], 1_000));
        cluster.observe(status("c", &[(1, PartitionState::Restoring)], 2_000));
        // An active holder is preferred to one still restoring.
        assert!(matches!(cluster.route(&user), Route::Remote { node_id, .. } if node_id == "b"));
        assert_eq!(cluster.claimed_elsewhere(1).as_deref(), Some("b"));
        // c active now, b not yet updated: the later claim wins.
        cluster.observe(status("c", &[(1, PartitionState::Active)], 3_000));
        assert!(matches!(cluster.route(&user), Route::Remote { node_id, .. } if node_id == "c"));
        // Members gone silent are forgotten: nobody claims the partition, requests wait.
        assert_eq!(cluster.expire(std::time::Duration::ZERO), 2);
        assert_eq!(cluster.route(&user), Route::Wait);
        assert_eq!(cluster.claimed_elsewhere(1), None);
        // This node's own status read back is not another member.
        cluster.observe(status("a", &[(1, PartitionState::Active)], 4_000));
        assert_eq!(cluster.claimed_elsewhere(1), None);
    }

    proptest! {
        /// Whatever the members claim, every node's view names one owner per partition at most,
        /// and a user routes to that owner (or here, or waits when there is none).
        #[test]
        fn routes_agree_with_the_view(claims in proptest::collection::vec((0u8..3, 0u32..4, any::<bool>(), 0i64..100), 0..20)) {
            let cluster = Cluster::new("me".into(), "me:1".into(), 4);
            let mut statuses: BTreeMap<u8, Status> = BTreeMap::new();
            for (node, partition, active, at) in claims {
                let state = if active { PartitionState::Active } else { PartitionState::Restoring };
                let s = statuses.entry(node).or_insert_with(|| status(&format!("n{node}"), &[], 0));
                s.partitions.insert(partition, state);
                s.at_ms = s.at_ms.max(at);
            }
            for s in statuses.into_values() {
                cluster.observe(s);
            }
            let view = cluster.view();
            for p in 0..4 {
                let user = user_in(p, 4);
                let shown = &view.partitions[p as usize];
                match cluster.route(&user) {
                    Route::Remote { node_id, .. } => prop_assert_eq!(shown.owner.as_deref(), Some(node_id.as_str())),
                    Route::Wait => prop_assert!(shown.owner.is_none()),
                    Route::Local => prop_assert!(false, "this node owns nothing"),
                }
            }
        }
    }
}
