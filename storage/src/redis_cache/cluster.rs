//! The shared tier on a Redis Cluster: the client, the sharded invalidation channel, and
//! clearing every user on every shard.
//!
//! Keys are sharded by hash slot, and the client routes each command to the slot's primary,
//! following `MOVED` and refreshing its slot map when a failover promotes a replica. Reads go
//! to primaries only: a replica may not yet have applied an invalidation's `DEL`, and a stale
//! entry read there would sit in L1 until its TTL.
//!
//! Invalidations use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7): the channel lives on
//! the shard owning its slot, where a plain `PUBLISH` would be copied to every node of the
//! cluster. The client does not reliably move a subscription when a failover moves the
//! channel's slot, so after a lost connection the listener makes sure it is still subscribed,
//! on the channel's current primary (see [`Listener::follow_cluster`]); if it had to subscribe
//! again, it clears L1 of whatever it may have missed. A connection lost to another shard costs
//! one probe and leaves L1 serving.

use std::time::Duration;

use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ProtocolVersion, PushInfo, PushKind, RedisResult};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::{Listener, RESUBSCRIBE_AFTER, SEP, scan};

/// Attempts per command: enough to follow a `MOVED` after a failover and retry once more;
/// `cache.timeout` bounds them all together.
const RETRIES: u32 = 3;

/// A cluster connection that connects in the background (the node starts while the cluster is
/// down), and the push messages (invalidations, lost connections) of every node it talks to.
pub(super) fn connect(
    nodes: &[String],
    timeout: Duration,
) -> RedisResult<(ClusterConnection, UnboundedReceiver<PushInfo>)> {
    let (pushes, received) = unbounded_channel();
    let client = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
        .use_protocol(ProtocolVersion::RESP3)
        .retries(RETRIES)
        .min_retry_wait(10)
        .max_retry_wait(100)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .build()?;
    let config = ClusterConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout)
        .set_push_sender(pushes);
    Ok((
        client.get_pending_async_connection_with_config(config),
        received,
    ))
}

impl Listener {
    /// Follows the sharded channel until the cache is dropped.
    ///
    /// A lost connection may or may not have carried the subscription, and the client does not
    /// reliably move a subscription when a failover moves the channel's slot. So after a lost
    /// connection the listener publishes a probe on the channel: if it hears it back, it lost
    /// nothing; if not, it subscribes again itself, which the client routes to the slot's
    /// current primary (refreshing its slots on the way). Every subscription is confirmed with a
    /// push, and any after the first means a gap.
    pub(super) async fn follow_cluster(
        self,
        mut conn: ClusterConnection,
        mut pushes: UnboundedReceiver<PushInfo>,
    ) {
        let probe = format!("{}{SEP}?", self.node_id);
        // `subscribe`: not subscribed (at first, or the server dropped it); `lost`: a connection
        // dropped and a probe has not come back yet; `probed`: one is on its way.
        let (mut subscribe, mut lost, mut probed, mut again) = (true, false, false, false);
        let mut tick = tokio::time::interval(RESUBSCRIBE_AFTER);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                push = pushes.recv() => {
                    let Some(push) = push else { return };
                    match push.kind {
                        PushKind::SMessage => {
                            let payload =
                                push.data.last().map(redis::from_redis_value_ref::<String>);
                            match payload {
                                Some(Ok(payload)) if payload == probe => {
                                    (lost, probed) = (false, false);
                                }
                                Some(Ok(payload)) => self.apply(&payload),
                                _ => {}
                            }
                        }
                        PushKind::SSubscribe => {
                            self.subscribed(again);
                            again = true;
                        }
                        // The channel's slot moved away: the server dropped the subscription.
                        PushKind::SUnsubscribe => subscribe = true,
                        PushKind::Disconnection => lost = true,
                        _ => {}
                    }
                }
                _ = tick.tick(), if subscribe || lost => {
                    let result = if subscribe || probed {
                        conn.ssubscribe(&self.channel).await.map(|()| {
                            (subscribe, lost, probed) = (false, false, false);
                        })
                    } else {
                        probed = true;
                        redis::cmd("SPUBLISH")
                            .arg(&self.channel)
                            .arg(&probe)
                            .query_async::<()>(&mut conn)
                            .await
                    };
                    if let Err(error) = result {
                        tracing::debug!(%error, "redis cluster invalidation channel not reached");
                    }
                }
            }
        }
    }
}

/// Deletes every key matching `pattern` on every primary: `SCAN` walks one node's keys, so it
/// is sent to each primary in turn (`UNLINK` is routed by the keys' slots).
pub(super) async fn clear_all(conn: &mut ClusterConnection, pattern: &str) -> RedisResult<()> {
    for (host, port) in primaries(conn).await? {
        let mut cursor: u64 = 0;
        loop {
            let node = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port,
            });
            let reply = conn.route_command(scan(cursor, pattern), node).await?;
            let (next, keys): (u64, Vec<String>) = redis::from_redis_value(reply)?;
            if !keys.is_empty() {
                redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<()>(conn)
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(())
}

/// The address of every primary the cluster does not consider failed.
async fn primaries(conn: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
    Ok(parse_primaries(&nodes))
}

/// From `CLUSTER NODES` (`<id> <host:port@bus[,hostname]> <flags> ...` per line).
fn parse_primaries(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_id, address, flags) = (fields.next()?, fields.next()?, fields.next()?);
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") || flags.iter().any(|f| matches!(*f, "fail" | "noaddr")) {
                return None;
            }
            let (host, port) = address.split(['@', ',']).next()?.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = port.parse().ok()?;
            (!host.is_empty()).then(|| (host.to_owned(), port))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primaries_are_the_masters_not_failed() {
        let nodes = "\
07c3 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
67ed 127.0.0.1:7001@17001,redis-1 master - 0 1426238317239 2 connected 5461-10922
292f 127.0.0.1:7002@17002 master,fail - 1426238316232 1426238315228 3 disconnected
824f 127.0.0.1:7003@17003 slave 07c3 0 1426238318243 1 connected
6ec2 [::1]:7004@17004 master - 0 1426238316232 4 connected 10923-16383
e7d1 :7005@17005 master,noaddr - 0 0 0 connected
";
        assert_eq!(
            parse_primaries(nodes),
            [
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7001),
                ("::1".to_owned(), 7004)
            ]
        );
    }
}
