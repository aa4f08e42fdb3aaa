//! A user's recommendations as a stream: the current list, then one item per visible change.
//! What the GraphQL subscription and the gRPC server stream both serve.
//!
//! The push hub hands out a watch channel, which holds only the latest value: a slow reader
//! skips to the newest list and never builds a backlog. Dropping the stream unsubscribes.

use std::sync::Arc;

use common::{ApiError, RecQuery, Recommendations};
use futures::{Stream, StreamExt};
use supervisors::{Node, Subscription};

/// Unsubscribes when the stream is dropped (the client stopped or went away).
struct Guard(Arc<Node>, u64);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.unsubscribe(self.1);
    }
}

pub async fn recommendations(
    node: Arc<Node>,
    user_id: &str,
    query: RecQuery,
) -> Result<impl Stream<Item = Arc<Recommendations>> + Send + 'static, ApiError> {
    let Subscription {
        id,
        current,
        updates,
    } = node.subscribe(user_id, query).await?;
    let state = (updates, current.clone(), Guard(node, id));
    let changes = futures::stream::unfold(state, |(mut updates, last, guard)| async move {
        loop {
            updates.changed().await.ok()?;
            let latest = updates.borrow_and_update().clone();
            if let Some(recs) = latest.filter(|recs| *recs != last) {
                return Some((recs.clone(), (updates, recs, guard)));
            }
        }
    });
    Ok(futures::stream::once(async move { current }).chain(changes))
}
