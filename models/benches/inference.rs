//! Inference latency of the hybrid ONNX scoring graph at production scale: 100K items, d = 64,
//! 300 successors per item (the default transition table), 100 item-to-item neighbours per item
//! (the default table), a 50-item recent history, a 200-item whole history, top-20, with a
//! realistic mask (a few hundred seen items filtered). Prints criterion's figures.

use criterion::{Criterion, criterion_group, criterion_main};
use models::Scorer;
use models::blend::Weights;
use models::scorer::Query;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ITEMS: usize = 100_000;
const DIM: usize = 64;
const SUCCESSORS: usize = 300;
const NEIGHBOURS: usize = 100;
const LIKED: usize = 200;

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let factors: Vec<f32> = (0..ITEMS * DIM)
        .map(|_| rng.random::<f32>() - 0.5)
        .collect();
    let bias: Vec<f32> = (0..ITEMS).map(|_| rng.random::<f32>() * 1e-3).collect();
    let successors: Vec<Vec<(u32, f32)>> = (0..ITEMS)
        .map(|_| {
            (0..SUCCESSORS)
                .map(|_| (rng.random_range(0..ITEMS as u32), rng.random::<f32>()))
                .collect()
        })
        .collect();
    let neighbours: Vec<Vec<(u32, f32)>> = (0..ITEMS)
        .map(|_| {
            (0..NEIGHBOURS)
                .map(|_| (rng.random_range(0..ITEMS as u32), rng.random::<f32>() - 0.3))
                .collect()
        })
        .collect();
    let onnx = models::onnx::scoring_graph(&factors, &bias, DIM, &successors, &neighbours, "bench");
    let history: Vec<(u32, f32)> = (0..50)
        .map(|i| {
            (
                rng.random_range(0..ITEMS as u32),
                0.5f32.powf((49 - i) as f32 / 3.0),
            )
        })
        .collect();
    let user: Vec<f32> = (0..DIM).map(|_| rng.random::<f32>() - 0.5).collect();
    let mut mask = vec![0.0f32; ITEMS];
    for _ in 0..300 {
        mask[rng.random_range(0..ITEMS)] = f32::NEG_INFINITY;
    }
    let liked: Vec<(u32, f32)> = (0..LIKED)
        .map(|_| (rng.random_range(0..ITEMS as u32), 1.0))
        .collect();
    let query = Query {
        user: &user,
        items: &liked,
        history: &history,
        weights: Weights::new(0.3, 0.4, 0.3),
    };
    for threads in [1, 2] {
        let mut scorer =
            Scorer::new(&onnx, ITEMS, DIM, threads).expect("ONNX Runtime (run `make setup`)");
        c.bench_function(&format!("onnx_top20_100k_items_d64_{threads}thread"), |b| {
            b.iter(|| scorer.top_k(&query, &mask, 20).expect("run"))
        });
    }
    // The same graph without an item-to-item table: what that part costs per request.
    let without = models::onnx::scoring_graph(&factors, &bias, DIM, &successors, &[], "bench");
    let mut scorer = Scorer::new(&without, ITEMS, DIM, 1).expect("ONNX Runtime");
    let cf_and_transitions = Query {
        items: &[],
        weights: Weights::new(0.6, 0.0, 0.4),
        ..query
    };
    c.bench_function("onnx_top20_100k_items_d64_1thread_no_item_item", |b| {
        b.iter(|| scorer.top_k(&cf_and_transitions, &mask, 20).expect("run"))
    });
    drop(scorer);
    let artifact_items: Vec<String> = (0..ITEMS).map(|i| format!("item-{i}")).collect();
    let meta = models::ModelMeta {
        version: "bench".into(),
        created_at: 0,
        dim: DIM,
        num_items: ITEMS,
        num_users: 0,
        num_interactions: 0,
        data_range: None,
        params: models::TrainParams {
            dim: DIM,
            iterations: 0,
            regularization: 0.1,
            alpha: 4.0,
            seed: 1,
        },
        metrics: Default::default(),
        hybrid: Default::default(),
        item_item: None,
        blend: None,
    };
    let artifact =
        models::ModelArtifact::build(meta, artifact_items, factors, vec![1.0; ITEMS], successors);
    let history: Vec<(String, f32)> = (0..50)
        .map(|i| (format!("item-{}", i * 97), 1.0 + (i % 3) as f32))
        .collect();
    c.bench_function("fold_in_50_interactions_d64", |b| {
        b.iter(|| artifact.fold_in(history.iter().map(|(id, w)| (id.as_str(), *w))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
