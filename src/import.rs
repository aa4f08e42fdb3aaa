//! `streamrec import movielens DIR`: stores MovieLens items, profiles and ratings (read by
//! `models::movielens`) in a node, then waits until its sessions have applied every rating.

use std::path::Path;

use serde::Serialize;
use supervisors::Node;

#[derive(Debug, Serialize, PartialEq)]
pub struct ImportSummary {
    pub format: &'static str,
    pub items: usize,
    pub users: usize,
    pub events_accepted: usize,
    pub events_duplicate: usize,
}

pub async fn movielens(node: &Node, dir: &Path) -> anyhow::Result<ImportSummary> {
    let (format, data) = models::movielens::load(dir)?;
    let err = |e: common::ApiError| anyhow::anyhow!(e.message);
    for item in &data.items {
        common::validate_id("item_id", &item.item_id)
            .map_err(|e| anyhow::anyhow!("item {:?}: {e}", item.item_id))?;
        node.upsert_item(item.clone()).await.map_err(err)?;
    }
    for (user, profile) in &data.users {
        node.put_profile(user, profile).await.map_err(err)?;
    }
    let mut summary = ImportSummary {
        format,
        items: data.items.len(),
        users: data.users.len(),
        events_accepted: 0,
        events_duplicate: 0,
    };
    for chunk in data.events().chunks(5000) {
        let outcome = node.post_events(chunk.to_vec()).await.map_err(err)?;
        summary.events_accepted += outcome.accepted;
        summary.events_duplicate += outcome.duplicates;
    }
    node.wait_caught_up(std::time::Duration::from_secs(600))
        .await;
    Ok(summary)
}
