//! Topping a list up to `k` where the model leaves it short (new items, new users): from what is
//! trending now for a user with no history, then from popularity; filled items score below every
//! item before them and pass the same [`eligible`] rule as the model's.

use std::collections::HashSet;

use common::Recommendation;
use storage::CatalogView;

use super::{ModelRequest, Reason, Signals, eligible};

/// Trending candidates taken beyond `k`, for those the catalog filters out.
const FILL_SLACK: usize = 50;

/// Tops `items` up to `k`: for a user with no history, with what is trending now first; then
/// with the most popular eligible items. Filled items score below every item before them.
pub fn fill(
    items: Vec<Recommendation>,
    req: &ModelRequest,
    catalog: &CatalogView,
    signals: Signals<'_>,
) -> Vec<Recommendation> {
    let items = match signals.trending {
        Some(t) if req.interactions.is_empty() && items.len() < req.k => {
            let now = common::now_millis();
            let ranked: Vec<(String, f64)> = t
                .top(req.k + req.exclude.len() + FILL_SLACK, now, false, |_| true)
                .into_iter()
                .map(|e| (e.id, e.score))
                .collect();
            fill_ranked(items, req, catalog, &ranked, Reason::Trending)
        }
        _ => items,
    };
    fill_ranked(
        items,
        req,
        catalog,
        &signals.popularity.ranked(),
        Reason::Popular,
    )
}

/// Tops `items` up to `k` from `ranked` (best first), scored below every item before them.
fn fill_ranked(
    mut items: Vec<Recommendation>,
    req: &ModelRequest,
    catalog: &CatalogView,
    ranked: &[(String, f64)],
    reason: Reason,
) -> Vec<Recommendation> {
    if items.len() >= req.k {
        return items;
    }
    let max = ranked
        .first()
        .map_or(1.0, |(_, c)| c.max(f64::MIN_POSITIVE));
    let floor = items.last().map(|r| r.score.min(0.0) - 1.0);
    let chosen: HashSet<String> = items.iter().map(|r| r.item_id.clone()).collect();
    let view = catalog.read();
    let reason = reason.to_string();
    for (id, count) in ranked {
        if items.len() >= req.k {
            break;
        }
        if req.exclude.contains(id)
            || chosen.contains(id)
            || !eligible(&view, id, req.category.as_deref())
        {
            continue;
        }
        let norm = (*count / max) as f32;
        items.push(Recommendation {
            item_id: id.clone(),
            score: floor.map_or(norm, |f| f + norm),
            reasons: vec![reason.clone()],
        });
    }
    items
}
