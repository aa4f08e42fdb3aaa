//! The activation gate: whether a candidate version may replace the active one.

use models::ModelMeta;

use super::GATE_METRIC;

/// What the gate found: whether the candidate may replace the active version, and the figures
/// it compared.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub pass: bool,
    pub message: String,
}

/// Compares `candidate` with `active` on the shared hold-out when the candidate's metrics hold
/// both figures ([`models::gate`]), else on each version's own hold-out metric, saying why; `None`
/// when there is nothing to compare (either version without metrics).
pub(super) fn gate(
    active: &ModelMeta,
    candidate: &ModelMeta,
    max_regression: f64,
) -> Option<Verdict> {
    use models::gate::{ACTIVE_SHARED_NDCG, MIN_SHARED_USERS, SHARED_NDCG, SHARED_USERS};
    let m = &candidate.metrics;
    let users = m.get(SHARED_USERS).map(|&u| u as usize);
    let (new, old, on) = match (m.get(SHARED_NDCG), m.get(ACTIVE_SHARED_NDCG)) {
        (Some(&new), Some(&old)) => (
            new,
            old,
            format!(
                "{GATE_METRIC} on the shared hold-out of {} users",
                users.unwrap_or_default()
            ),
        ),
        _ => {
            let (Some(&old), Some(&new)) = (active.metrics.get(GATE_METRIC), m.get(GATE_METRIC))
            else {
                return None;
            };
            let why = users.map_or_else(String::new, |u| {
                format!(
                    " (only {u} users with fresh held-out events, fewer than {MIN_SHARED_USERS})"
                )
            });
            (
                new,
                old,
                format!("{GATE_METRIC} on each version's own hold-out{why}"),
            )
        }
    };
    let pass = new >= old * (1.0 - max_regression);
    let message = format!(
        "{on}: candidate {new:.4}, active {old:.4}{}",
        if pass {
            String::new()
        } else {
            format!(
                " (more than {:.0}% below the active version)",
                max_regression * 100.0
            )
        }
    );
    Some(Verdict { pass, message })
}
