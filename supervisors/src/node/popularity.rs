//! The node's item popularity at start: what its store counted, per partition (see
//! `actors::popularity`).

use std::sync::Arc;

use actors::Popularity;
use common::Config;
use storage::CatalogView;

/// Item popularity as the store counted it, per partition; a store of an earlier version (or
/// one kept by another number of partitions) has its counters rebuilt from its sessions first.
/// Only catalogued items have a popularity: counters of ids nobody catalogued (or since
/// deleted) stay out of the map. `publishing` in a cluster (see `actors::popularity`).
pub(super) fn load(
    config: &Config,
    store: &dyn storage::SessionStore,
    catalog: &Arc<CatalogView>,
    publishing: bool,
) -> anyhow::Result<Popularity> {
    let partitions = config.events.num_partitions;
    if store.item_stats_partitions()? != Some(partitions) {
        let started = std::time::Instant::now();
        let (view, cap) = (catalog.clone(), config.trending.max_user_weight);
        let sessions = store.rebuild_item_stats(partitions, &move |state: &[u8]| {
            actors::popularity::of_state(state, &view, cap)
        })?;
        tracing::info!(
            sessions,
            partitions,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rebuilt item popularity per partition"
        );
    }
    let stats = store
        .item_stats()?
        .into_iter()
        .filter(|(_, id, weight)| *weight > 0.0 && catalog.get(id).is_some())
        .collect();
    Ok(Popularity::by_partition(stats, publishing))
}
