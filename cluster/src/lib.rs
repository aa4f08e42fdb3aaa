//! Cluster sharding, starting with placement: which node owns which event-log partition (and so
//! which users' sessions). A single node owns everything today; membership and the gRPC
//! transport between nodes grow here.
//!
//! Placement is rendezvous (highest-random-weight) hashing: every (partition, node) pair gets a
//! score and the highest-scoring node owns the partition. When a node joins or leaves, only the
//! partitions it gains or loses move, and every node computes the same map from the same
//! membership with no coordination.

use std::collections::BTreeMap;

/// A node's identity in the cluster.
pub type NodeId = String;

/// Which node owns each partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMap {
    owners: Vec<NodeId>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterError {
    #[error("a cluster needs at least one node")]
    NoNodes,
}

/// 64-bit FNV-1a followed by a murmur3 finaliser: cheap, stable across versions and platforms.
fn score(partition: u32, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in partition.to_le_bytes().iter().chain(node.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

impl ShardMap {
    pub fn new(num_partitions: u32, nodes: &[NodeId]) -> Result<Self, ClusterError> {
        if nodes.is_empty() {
            return Err(ClusterError::NoNodes);
        }
        let owners = (0..num_partitions)
            .map(|p| {
                nodes
                    .iter()
                    .max_by_key(|n| (score(p, n), n.as_str()))
                    .cloned()
                    .ok_or(ClusterError::NoNodes)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { owners })
    }

    pub fn owner(&self, partition: u32) -> &str {
        &self.owners[partition as usize]
    }

    /// The partitions each node owns.
    pub fn assignments(&self) -> BTreeMap<&str, Vec<u32>> {
        let mut map: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for (p, node) in self.owners.iter().enumerate() {
            map.entry(node.as_str()).or_default().push(p as u32);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(n: usize) -> Vec<NodeId> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn one_node_owns_everything_and_none_is_an_error() {
        let map = ShardMap::new(12, &nodes(1)).expect("map");
        assert!((0..12).all(|p| map.owner(p) == "node-0"));
        assert_eq!(ShardMap::new(12, &[]), Err(ClusterError::NoNodes));
    }

    #[test]
    fn spreads_partitions_over_nodes() {
        let map = ShardMap::new(1200, &nodes(4)).expect("map");
        for (node, parts) in map.assignments() {
            assert!(
                (200..400).contains(&parts.len()),
                "{node} owns {}",
                parts.len()
            );
        }
    }

    proptest! {
        /// Removing a node moves only the partitions it owned.
        #[test]
        fn leaving_moves_only_the_leavers_partitions(n in 2usize..8, leaver in 0usize..8, partitions in 1u32..200) {
            let all = nodes(n);
            let leaver = leaver % n;
            let before = ShardMap::new(partitions, &all).expect("map");
            let rest: Vec<NodeId> = all.iter().enumerate().filter(|(i, _)| *i != leaver).map(|(_, id)| id.clone()).collect();
            let after = ShardMap::new(partitions, &rest).expect("map");
            for p in 0..partitions {
                if before.owner(p) != all[leaver] {
                    prop_assert_eq!(before.owner(p), after.owner(p));
                }
            }
        }
    }
}
