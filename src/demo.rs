//! `streamrec demo`: a node on embedded defaults with a synthetic shop. Users have a favourite
//! category, so collaborative filtering has structure to find; a live stream of events keeps
//! arriving, so a newcomer watching a user's recommendations (REST or WebSocket) sees them move.

use std::time::Duration;

use common::{Config, Event, EventKind, Item};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use supervisors::Node;

const CATEGORIES: [&str; 8] = [
    "books", "music", "movies", "games", "sports", "garden", "kitchen", "toys",
];
const NUM_ITEMS: usize = 400;
const NUM_USERS: usize = 300;
const HISTORY_EVENTS: usize = 12_000;

fn item_id(i: usize) -> String {
    format!("item-{i:04}")
}

fn catalog() -> Vec<Item> {
    (0..NUM_ITEMS)
        .map(|i| {
            let category = CATEGORIES[i % CATEGORIES.len()];
            Item {
                item_id: item_id(i),
                title: format!(
                    "{} #{}",
                    category[..1].to_uppercase() + &category[1..],
                    i / CATEGORIES.len()
                ),
                categories: vec![category.to_owned()],
                tags: vec![if i % 3 == 0 { "bestseller" } else { "new" }.to_owned()],
                attributes: serde_json::Map::from_iter([(
                    "price".to_owned(),
                    serde_json::json!(5 + (i * 37) % 95),
                )]),
                available: true,
                updated_at: common::now_millis(),
            }
        })
        .collect()
}

/// One synthetic event of a random user: mostly in the user's favourite category, skewed towards each
/// category's head items.
fn event(rng: &mut StdRng, ts: i64) -> Event {
    let user = rng.random_range(0..NUM_USERS);
    let favourite = user % CATEGORIES.len();
    let category = if rng.random_bool(0.8) {
        favourite
    } else {
        rng.random_range(0..CATEGORIES.len())
    };
    let per_category = NUM_ITEMS / CATEGORIES.len();
    let rank = ((rng.random::<f64>().powi(3)) * per_category as f64) as usize;
    let item = rank.min(per_category - 1) * CATEGORIES.len() + category;
    let kind = match rng.random_range(0..100) {
        0..70 => EventKind::View,
        70..90 => EventKind::Click,
        90..97 => EventKind::AddToCart,
        _ => EventKind::Purchase,
    };
    Event {
        event_id: uuid::Uuid::now_v7().to_string(),
        user_id: format!("user-{user}"),
        item_id: item_id(item),
        kind,
        value: None,
        ts,
    }
}

pub async fn run(mut config: Config, rate: u32) -> anyhow::Result<()> {
    if config.model.retrain_interval == common::config::ModelConfig::default().retrain_interval {
        // Retrain often so the demo shows new versions being swapped in.
        config.model.retrain_interval = Duration::from_secs(120);
    }
    let node = Node::start(config).await?;
    let mut rng = StdRng::seed_from_u64(7);
    if node.services().catalog.is_empty() {
        println!(
            "seeding a synthetic catalog of {NUM_ITEMS} items and {HISTORY_EVENTS} past events ..."
        );
        for item in catalog() {
            node.upsert_item(item)
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?;
        }
        let start = common::now_millis() - 7 * 24 * 3600 * 1000;
        let history: Vec<Event> = (0..HISTORY_EVENTS)
            .map(|i| event(&mut rng, start + i as i64 * 50_000))
            .collect();
        for chunk in history.chunks(1000) {
            node.post_events(chunk.to_vec())
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?;
        }
        node.wait_caught_up(Duration::from_secs(120)).await;
        let version = node
            .train(true)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
        println!("trained model {version}");
    }
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(crate::serve(node.clone(), Some(ready_tx)));
    let addr = ready_rx.await?;
    let base = format!("http://{addr}");
    println!(
        "\nstreamrec demo is running on {base} (data in {data}); Ctrl-C stops it.\n\n  \
         recommendations  {base}/v1/users/user-1/recommendations?k=5\n  \
         live push        ws://{addr}/v1/ws?user_id=user-1   (e.g. `websocat ws://{addr}/v1/ws?user_id=user-1`)\n  \
         a user's state   {base}/v1/users/user-1\n  \
         actor tree       {base}/v1/admin/actors\n  \
         model versions   {base}/v1/admin/models\n  \
         console          {base}/console\n  \
         GraphQL          {base}/graphiql\n  \
         REST docs        {base}/docs\n  \
         gRPC             grpcurl -plaintext {addr} list\n  \
         metrics          {base}/metrics\n  \
         readiness        {base}/readyz\n\n\
         Authentication is off in the demo; `streamrec serve` requires bearer tokens.\n\
         {rate} synthetic events per second are streaming in; user-1 likes {fav}.\n",
        data = node.config.data_dir.display(),
        fav = CATEGORIES[1],
    );
    let stream = tokio::spawn({
        let node = node.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let per_tick = (rate as f64 / 10.0).max(0.0);
            let mut carry = 0.0;
            loop {
                tick.tick().await;
                carry += per_tick;
                let n = carry.floor() as usize;
                carry -= n as f64;
                let events: Vec<Event> = (0..n)
                    .map(|_| event(&mut rng, common::now_millis()))
                    .collect();
                if !events.is_empty() && node.post_events(events).await.is_err() {
                    break;
                }
            }
        }
    });
    let result = server.await?;
    stream.abort();
    result
}
