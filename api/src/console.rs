//! The operator console: one static page (no external assets, so it works offline) and a
//! server-sent event stream of snapshots that keeps it live. The page keeps the last minutes of
//! samples itself and draws its charts from them: the snapshots, and `/metrics` scraped every
//! second (rates from counters, quantiles from histogram buckets), so the node keeps no history
//! for it. Every action the page offers goes through the JSON admin API that scripts and
//! `streamrec inspect` use too.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::response::Html;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use supervisors::Node;

use crate::error::AppError;
use crate::streams::{Caller, until_expiry};

/// How often the console's stream sends a snapshot.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

pub async fn page() -> Html<&'static str> {
    Html(include_str!("../assets/console.html"))
}

/// `GET /v1/admin/stream`: a `snapshot` event (tree, models, ingestion, cache) every second,
/// until the caller's token expires. It counts toward the caller's streams.
pub async fn stream(
    State(node): State<Arc<Node>>,
    caller: Option<Extension<Caller>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    let guard = caller.map(|c| c.open_stream()).transpose()?;
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
    Ok(Sse::new(until_expiry(ticks, guard, None)).keep_alive(KeepAlive::default()))
}
