//! What the users' bridge does when the consumer group moves partitions: releases what it lost,
//! holds what it gained pending until the previous holder let go, then restores it (see
//! [`handoff`](crate::handoff)) and consumes it from what its restored states cover.

use std::time::Instant;

use kafka::{Rebalance, Topic};
use ractor::ActorProcessingErr;

use super::BridgeState;
use crate::handoff;

impl BridgeState {
    /// Acts on what the group moved, in order: partitions of `user-events` revoked are
    /// released, those assigned become pending (see [`Self::activate_pending`]). Partitions lost
    /// with the broker out of reach keep serving reads from this node's state until the next
    /// assignment says whether they are still its own.
    pub(super) async fn rebalance(
        &mut self,
        rebalances: Vec<Rebalance>,
    ) -> Result<(), ActorProcessingErr> {
        let services = self.args.services.clone();
        let user_partitions = |list: &[(Topic, i32)]| -> Vec<u32> {
            list.iter()
                .filter(|(topic, _)| *topic == Topic::UserEvents)
                .map(|(_, p)| *p as u32)
                .collect()
        };
        for rebalance in rebalances {
            match rebalance {
                Rebalance::Revoked(list) => {
                    let lost = user_partitions(&list);
                    for p in &lost {
                        self.pending.remove(p);
                    }
                    self.release(&lost).await?;
                }
                Rebalance::Lost(list) => {
                    self.lost.extend(user_partitions(&list));
                }
                Rebalance::Assigned(list) => {
                    let new = user_partitions(&list);
                    // Lost partitions that did not come back are another node's now.
                    let gone: Vec<u32> = std::mem::take(&mut self.lost)
                        .into_iter()
                        .filter(|p| !new.contains(p))
                        .collect();
                    self.release(&gone).await?;
                    if !new.is_empty() {
                        services.cluster.assigned(&new);
                        let now = Instant::now();
                        self.pending.extend(new.into_iter().map(|p| (p, now)));
                    }
                }
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
        let settle = services.config.events.assign_settle;
        let give_up = services.config.cluster.member_timeout * 2;
        let ready: Vec<u32> = self
            .pending
            .iter()
            .filter(|(p, since)| {
                since.elapsed() >= settle
                    && (services.cluster.claimed_elsewhere(**p).is_none()
                        || since.elapsed() >= give_up)
            })
            .map(|(p, _)| *p)
            .collect();
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
            self.pending.remove(&partition);
            services.cluster.activate(partition);
            self.obs_state.num_restores += 1;
            self.obs_state.num_restored_records += restored.records;
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
