//! Training the item-to-item part at 100,000 items, where the dense solution (80 GB of f64)
//! is out of reach: the bounded-memory per-item regressions on pruned co-occurrence
//! neighbourhoods. Synthetic data: 100,000 users with 5 to 40 positives each, items drawn with a
//! Zipf-like popularity. Prints the training time, the table's size against `top_k × items`,
//! and the process's peak resident memory before and after (Linux). One run, not a criterion
//! loop: a training takes seconds to minutes. Then the closed form at MovieLens-100k's size.

use std::time::Instant;

use models::item_item::{ItemItem, ItemItemParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ITEMS: usize = 100_000;
const USERS: usize = 100_000;

/// Peak resident set size of this process in MiB (`VmHWM`), where /proc has it.
fn peak_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() {
    // `cargo bench` passes flags such as --bench; a filter that excludes us skips the run.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"item_item".contains(&a))
    {
        return;
    }
    let mut rng = StdRng::seed_from_u64(1);
    let baskets: Vec<Vec<u32>> = (0..USERS)
        .map(|_| {
            let n = rng.random_range(5..=40);
            let mut b: Vec<u32> = (0..n)
                .map(|_| {
                    // Zipf-like: item ~ ITEMS^u - 1 for uniform u, popular items first.
                    let u: f64 = rng.random();
                    ((ITEMS as f64).powf(u) - 1.0) as u32
                })
                .collect();
            b.sort_unstable();
            b.dedup();
            b
        })
        .collect();
    let positives: usize = baskets.iter().map(Vec::len).sum();
    let params = ItemItemParams::default();
    let before = peak_mib();
    let started = Instant::now();
    let model = ItemItem::train(ITEMS, &baskets, params);
    let seconds = started.elapsed().as_secs_f64();
    let after = peak_mib();
    let entries = model.len();
    let bound = params.top_k * ITEMS;
    println!(
        "item-to-item at {ITEMS} items, {USERS} users, {positives} positives: trained in {seconds:.1}s \
         (top_k={}, neighbours={}, λ={})",
        params.top_k, params.neighbours, params.lambda
    );
    println!(
        "table: {entries} weights, {:.1} MiB as the graph's [items, top_k] rows and weights; bound top_k × items = {bound}",
        (ITEMS * model.rows.iter().map(Vec::len).max().unwrap_or(0) * 8) as f64 / (1024.0 * 1024.0)
    );
    if let (Some(b), Some(a)) = (before, after) {
        println!("peak resident memory: {b:.0} MiB with the data, {a:.0} MiB after training");
    }
    assert!(entries <= bound, "the table outgrew top_k × items");
    // The closed form at the size of MovieLens-100k, as the trainer runs it.
    let (items, users) = (1_682, 943);
    let small: Vec<Vec<u32>> = baskets
        .iter()
        .take(users)
        .map(|b| {
            let mut b: Vec<u32> = b.iter().map(|&i| i % items as u32).collect();
            b.sort_unstable();
            b.dedup();
            b
        })
        .collect();
    let started = Instant::now();
    let dense = ItemItem::train(items, &small, params);
    println!(
        "closed form at {items} items: {:.1}s, {} weights kept",
        started.elapsed().as_secs_f64(),
        dense.len()
    );
}
