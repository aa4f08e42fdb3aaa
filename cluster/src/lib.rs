//! Cluster sharding: who owns which partition of the user topics (and so which users' sessions),
//! what every node knows of the others, and where a request for a user goes.
//!
//! Ownership is not decided here: Kafka's consumer group decides it, and the node's Kafka bridge
//! records what it was given ([`Cluster::assigned`], [`Cluster::activate`], [`Cluster::revoked`]).
//! Each node publishes its own [`Status`] (address and partitions) on a status topic, on every
//! rebalance and on a heartbeat, and reads everyone's, as Kafka Connect does; [`Cluster`] merges
//! them into the shard map that [`Cluster::route`] answers from and `GET /v1/admin/cluster` shows.
//!
//! The map can be stale for a moment during a rebalance: a route to a node that no longer owns a
//! partition is refused by that node and retried by the caller until `cluster.handoff_timeout`.

mod membership;

pub use membership::{
    Cluster, Member, PartitionState, PartitionView, Route, Status, View, partition_of,
};

/// A node's identity in the cluster (`cluster.node_id`).
pub type NodeId = String;
