//! What the users' bridge does when the consumer group moves partitions: releases what it lost,
//! holds what it gained pending until the previous holder let go, then restores it (see
//! [`handoff`](crate::handoff)) and consumes it from what its restored states cover.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka::{Rebalance, Topic};
use ractor::ActorProcessingErr;

use super::BridgeState;
use crate::handoff;

/// The bridge's bookkeeping of moving partitions of `user-events`, apart from the effects (the
/// releases and restores) so that its ordering rules can be tested alone.
#[derive(Debug, Default)]
pub(super) struct Moves {
    /// Lost with the broker out of reach, until the next assignment says whose they are.
    lost: Vec<u32>,
    /// Assigned here and not restored yet, with when.
    pending: BTreeMap<u32, Instant>,
}

/// What one rebalance asks of the bridge, in this order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Step {
    /// Partitions whose sessions stop here (their state stays stored).
    pub(super) release: Vec<u32>,
    /// Partitions newly pending here.
    pub(super) assigned: Vec<u32>,
}

impl Moves {
    /// Takes in one rebalance of the group. A revoked partition is released at once (and is
    /// no longer pending); a lost one keeps serving reads until an assignment leaves it out;
    /// an assigned one waits (see [`Self::ready`]).
    pub(super) fn on(&mut self, rebalance: Rebalance, at: Instant) -> Step {
        let user_partitions = |list: &[(Topic, i32)]| -> Vec<u32> {
            list.iter()
                .filter(|(topic, _)| *topic == Topic::UserEvents)
                .map(|(_, p)| *p as u32)
                .collect()
        };
        match rebalance {
            Rebalance::Revoked(list) => {
                let release = user_partitions(&list);
                for p in &release {
                    self.pending.remove(p);
                }
                Step {
                    release,
                    ..Step::default()
                }
            }
            Rebalance::Lost(list) => {
                self.lost.extend(user_partitions(&list));
                Step::default()
            }
            Rebalance::Assigned(list) => {
                let assigned = user_partitions(&list);
                // Lost partitions that did not come back are another node's now, pending or not.
                let release: Vec<u32> = std::mem::take(&mut self.lost)
                    .into_iter()
                    .filter(|p| !assigned.contains(p))
                    .collect();
                for p in &release {
                    self.pending.remove(p);
                }
                for p in &assigned {
                    self.pending.insert(*p, at);
                }
                Step { release, assigned }
            }
        }
    }

    /// Whether a partition waits for its restore (its messages are not applied meanwhile).
    pub(super) fn is_pending(&self, partition: u32) -> bool {
        self.pending.contains_key(&partition)
    }

    /// The pending partitions ready to restore at `now`: pending for `settle` at least, and no
    /// other live member still claims them, unless they have for `give_up`.
    pub(super) fn ready(
        &self,
        now: Instant,
        settle: Duration,
        give_up: Duration,
        claimed_elsewhere: impl Fn(u32) -> bool,
    ) -> Vec<u32> {
        self.pending
            .iter()
            .filter(|(p, since)| {
                let waited = now.saturating_duration_since(**since);
                waited >= settle && (!claimed_elsewhere(**p) || waited >= give_up)
            })
            .map(|(p, _)| *p)
            .collect()
    }

    /// A partition restored: it is consumed again.
    pub(super) fn restored(&mut self, partition: u32) {
        self.pending.remove(&partition);
    }
}

impl BridgeState {
    /// Acts on what the group moved, in order: partitions of `user-events` revoked are
    /// released, those assigned become pending (see [`Self::activate_pending`]). Partitions lost
    /// with the broker out of reach keep serving reads from this node's state until the next
    /// assignment says whether they are still its own.
    pub(super) async fn rebalance(
        &mut self,
        rebalances: Vec<Rebalance>,
    ) -> Result<(), ActorProcessingErr> {
        for rebalance in rebalances {
            let step = self.moves.on(rebalance, Instant::now());
            self.release(&step.release).await?;
            if !step.assigned.is_empty() {
                self.args.services.cluster.assigned(&step.assigned);
            }
        }
        Ok(())
    }

    /// Restores and activates the pending partitions whose previous holder has let go: no other
    /// live member still says it holds the partition (it releases only between its batches, and
    /// says so on the status topic), or it has said so for longer than two member timeouts (a
    /// holder that stopped speaking is dropped after one). Some brokers (tansu) assign a partition
    /// to its new owner for a while before the old one gives it up, or assign it for a moment to
    /// a node that gives it back; waiting here keeps two nodes from applying it at once. Once
    /// restored, the partition is consumed again from the input offset its states cover (else
    /// the committed one): what was fetched meanwhile was dropped.
    pub(super) async fn activate_pending(&mut self) -> Result<(), ActorProcessingErr> {
        let services = self.args.services.clone();
        let ready = self.moves.ready(
            Instant::now(),
            services.config.events.assign_settle,
            services.config.cluster.member_timeout * 2,
            |p| services.cluster.claimed_elsewhere(p).is_some(),
        );
        for partition in ready {
            let restored = handoff::restore(
                &services,
                &self.args.sessions,
                &self.args.settings,
                partition,
            )
            .await?;
            if let Some(consumer) = &self.consumer {
                let from = consumer
                    .rewind(Topic::UserEvents, partition as i32, restored.covered)
                    .await?;
                tracing::info!(
                    partition,
                    from,
                    "partition consumed from what its restore covers"
                );
            }
            self.moves.restored(partition);
            services.cluster.activate(partition);
            self.obs.update(|o| {
                o.num_restores += 1;
                o.num_restored_records += restored.records;
            });
        }
        Ok(())
    }

    async fn release(&mut self, partitions: &[u32]) -> Result<(), ActorProcessingErr> {
        if partitions.is_empty() {
            return Ok(());
        }
        let stopped =
            handoff::release(&self.args.services, &self.args.sessions, partitions).await?;
        tracing::info!(?partitions, sessions = stopped, "partitions released");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SETTLE: Duration = Duration::from_secs(2);
    const GIVE_UP: Duration = Duration::from_secs(8);

    fn users(partitions: &[i32]) -> Vec<(Topic, i32)> {
        partitions.iter().map(|p| (Topic::UserEvents, *p)).collect()
    }

    #[test]
    fn an_assigned_partition_waits_to_settle_and_for_its_holder_to_let_go() {
        let t0 = Instant::now();
        let mut moves = Moves::default();
        let step = moves.on(Rebalance::Assigned(users(&[1, 2])), t0);
        assert_eq!(step.assigned, [1, 2]);
        assert!(moves.is_pending(1) && moves.is_pending(2));
        let claimed = |p: u32| p == 2;
        assert!(
            moves.ready(t0, SETTLE, GIVE_UP, claimed).is_empty(),
            "not settled"
        );
        assert_eq!(moves.ready(t0 + SETTLE, SETTLE, GIVE_UP, claimed), [1]);
        // A holder that never lets go is overruled after `give_up`.
        assert_eq!(moves.ready(t0 + GIVE_UP, SETTLE, GIVE_UP, claimed), [1, 2]);
        moves.restored(1);
        assert!(!moves.is_pending(1));
        assert!(moves.is_pending(2));
    }

    #[test]
    fn a_revoked_partition_is_released_and_no_longer_pending() {
        let t0 = Instant::now();
        let mut moves = Moves::default();
        moves.on(Rebalance::Assigned(users(&[0, 3])), t0);
        let step = moves.on(Rebalance::Revoked(users(&[3])), t0);
        assert_eq!(step.release, [3]);
        assert!(!moves.is_pending(3));
        assert_eq!(moves.ready(t0 + GIVE_UP, SETTLE, GIVE_UP, |_| false), [0]);
    }

    #[test]
    fn lost_partitions_are_released_only_when_an_assignment_leaves_them_out() {
        let t0 = Instant::now();
        let mut moves = Moves::default();
        assert_eq!(
            moves.on(Rebalance::Lost(users(&[0, 1])), t0),
            Step::default()
        );
        let step = moves.on(Rebalance::Assigned(users(&[1])), t0);
        assert_eq!(step.release, [0], "0 went to another node; 1 came back");
        assert_eq!(
            step.assigned,
            [1],
            "and 1 is restored again before it applies"
        );
        // Nothing lost remains to release.
        assert!(
            moves
                .on(Rebalance::Assigned(users(&[])), t0)
                .release
                .is_empty()
        );
    }

    #[test]
    fn other_topics_never_move_sessions() {
        let t0 = Instant::now();
        let mut moves = Moves::default();
        let step = moves.on(
            Rebalance::Assigned(vec![(Topic::Transactions, 0), (Topic::ProductUpdates, 1)]),
            t0,
        );
        assert_eq!(step, Step::default());
        assert!(!moves.is_pending(0) && !moves.is_pending(1));
    }

    fn rebalance() -> impl Strategy<Value = Rebalance> {
        let list = || prop::collection::vec(0..6i32, 0..4).prop_map(|p| users(&p));
        prop_oneof![
            list().prop_map(Rebalance::Assigned),
            list().prop_map(Rebalance::Revoked),
            list().prop_map(Rebalance::Lost),
        ]
    }

    proptest! {
        /// Whatever the group does: a partition is pending here if and only if the latest word
        /// of the group on it was an assignment (a loss is no word until the next assignment,
        /// which takes back what it leaves out), and no step releases what it assigns.
        #[test]
        fn pending_follows_the_latest_word_of_the_group(
            rebalances in prop::collection::vec(rebalance(), 1..12)
        ) {
            let t0 = Instant::now();
            let mut moves = Moves::default();
            let mut last: BTreeMap<u32, bool> = BTreeMap::new();
            let mut lost: Vec<u32> = Vec::new();
            for r in rebalances {
                match &r {
                    Rebalance::Assigned(l) => {
                        let new: Vec<u32> = l.iter().map(|(_, p)| *p as u32).collect();
                        for p in lost.drain(..).filter(|p| !new.contains(p)) {
                            last.insert(p, false);
                        }
                        for p in new {
                            last.insert(p, true);
                        }
                    }
                    Rebalance::Revoked(l) => {
                        for (_, p) in l {
                            last.insert(*p as u32, false);
                        }
                    }
                    Rebalance::Lost(l) => lost.extend(l.iter().map(|(_, p)| *p as u32)),
                }
                let step = moves.on(r, t0);
                for p in &step.release {
                    prop_assert!(!step.assigned.contains(p), "{p} released and assigned at once");
                }
            }
            for p in 0..6u32 {
                prop_assert_eq!(moves.is_pending(p), last.get(&p).copied().unwrap_or(false));
            }
        }
    }
}
