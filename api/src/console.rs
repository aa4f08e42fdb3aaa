//! The operator console: one static page (no external assets, so it works offline) and a
//! server-sent event stream of snapshots that keeps it live. Every action the page offers goes
//! through the JSON admin API that scripts and `streamrec inspect` use too.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Html;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use supervisors::Node;

/// How often the console's stream sends a snapshot.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

pub async fn page() -> Html<&'static str> {
    Html(include_str!("../assets/console.html"))
}

/// `GET /v1/admin/stream`: a `snapshot` event (tree, models, ingestion, cache) every second.
pub async fn stream(
    State(node): State<Arc<Node>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let ticks = futures::stream::unfold(
        (node, tokio::time::interval(SNAPSHOT_EVERY)),
        |(node, mut interval)| async move {
            interval.tick().await;
            let snapshot = node.snapshot().await;
            let event = Event::default()
                .event("snapshot")
                .data(snapshot.to_string());
            Some((Ok(event), (node, interval)))
        },
    );
    Sse::new(ticks).keep_alive(KeepAlive::default())
}
