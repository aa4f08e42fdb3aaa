//! The evaluation protocol's data, shared by the offline yardstick ([`super::eval`]) and the
//! check of the served model (`streamrec eval --served`): positives and their splits, the train
//! part of a split as the events a node would have received, and the metrics of lists a node
//! served, computed by the very function that scores the offline models.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use common::{Event, EventKind, Item};

use super::MovieLensError;
use crate::Interactions;
use crate::als::Cell;
use crate::eval::{Metrics, evaluate_with, random_split, temporal_split};

/// A rating at or above this is a positive; every other rating is dropped.
pub const POSITIVE: f64 = 4.0;

/// MovieLens files read for evaluation.
pub struct Protocol {
    pub items: Vec<Item>,
    /// Every item of the catalogue and of the ratings, by index in numeric id order.
    pub data: Interactions,
    /// Each positive once, weight 1.
    pub cells: Vec<Cell>,
    /// The rating of each positive, by (user, item) index.
    ratings: HashMap<(u32, u32), f64>,
}

/// One split of the positives: train and test cells.
pub struct Split {
    pub name: &'static str,
    pub train: Vec<Cell>,
    pub test: Vec<Cell>,
}

/// Item ids in numeric order when they are all numbers, else in text order, so that the
/// (timestamp, item id) tie-break of the protocol is the id's natural order.
fn id_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

impl Protocol {
    pub fn load(dir: &Path) -> Result<Self, MovieLensError> {
        let (_, dataset) = super::load(dir)?;
        let mut ids: Vec<&str> = dataset
            .items
            .iter()
            .map(|i| i.item_id.as_str())
            .chain(dataset.ratings.iter().map(|r| r.1.as_str()))
            .collect();
        ids.sort_unstable_by(|a, b| id_order(a, b));
        ids.dedup();
        let mut data = Interactions::default();
        for id in &ids {
            data.add_item(id);
        }
        let mut ratings = HashMap::new();
        for (user, item, rating, ts) in &dataset.ratings {
            if *rating >= POSITIVE {
                data.add(user, item, 1.0, *ts);
                let key = (
                    data.user_index(user).expect("just added"),
                    data.item_index(item).expect("just added"),
                );
                ratings.insert(key, *rating);
            }
        }
        let cells = data.cells();
        Ok(Self {
            items: dataset.items,
            data,
            cells,
            ratings,
        })
    }

    /// The protocol's two splits: the last 20% of each user's positives (temporal), and a random
    /// 20% drawn with `seed`; users with fewer than 5 positives stay in train.
    pub fn splits(&self, seed: u64) -> [Split; 2] {
        let (train, test) = temporal_split(&self.cells, 0.2, 5);
        let temporal = Split {
            name: "temporal",
            train,
            test,
        };
        let (train, test) = random_split(&self.cells, 0.2, 5, seed);
        let random = Split {
            name: "random",
            train,
            test,
        };
        [temporal, random]
    }

    /// `cells` as the `rating` events a node receives (the original rating and time; ids that
    /// make a second delivery a duplicate), in the protocol's order: by time, then item id, as
    /// the offline models read each history (MovieLens has many ratings within one second).
    pub fn events(&self, cells: &[Cell]) -> Vec<Event> {
        let mut cells = cells.to_vec();
        cells.sort_by_key(|c| (c.ts, c.item, c.user));
        cells
            .iter()
            .map(|c| {
                let (user_id, item_id) = (
                    &self.data.users[c.user as usize],
                    &self.data.items[c.item as usize],
                );
                Event {
                    event_id: format!("ml:{user_id}:{item_id}:{}", c.ts),
                    user_id: user_id.clone(),
                    item_id: item_id.clone(),
                    kind: EventKind::Rating,
                    value: Some(self.ratings[&(c.user, c.item)]),
                    ts: c.ts,
                }
            })
            .collect()
    }

    /// The ids of the users with something held out in `split`.
    pub fn test_users(&self, split: &Split) -> Vec<String> {
        let mut users: Vec<u32> = split.test.iter().map(|c| c.user).collect();
        users.sort_unstable();
        users.dedup();
        users
            .into_iter()
            .map(|u| self.data.users[u as usize].clone())
            .collect()
    }

    /// Each user's train items in `split`, by ids.
    pub fn train_items(&self, split: &Split) -> HashMap<String, HashSet<String>> {
        let mut items: HashMap<String, HashSet<String>> = HashMap::new();
        for c in &split.train {
            items
                .entry(self.data.users[c.user as usize].clone())
                .or_default()
                .insert(self.data.items[c.item as usize].clone());
        }
        items
    }

    /// The metrics @`k` of lists a node served (item ids, best first, by user id), computed as
    /// the offline models' are: a list is ranked as given, an item of the user's train set or
    /// unknown to the protocol never counts, and a list shorter than `k` is not filled.
    pub fn evaluate_lists(
        &self,
        split: &Split,
        lists: &HashMap<String, Vec<String>>,
        k: usize,
    ) -> Metrics {
        let num_items = self.data.items.len();
        evaluate_with(num_items, &split.train, &split.test, k, |user| {
            let mut scores = vec![f32::NEG_INFINITY; num_items];
            let listed = lists
                .get(&self.data.users[user as usize])
                .map_or(&[][..], Vec::as_slice);
            for (rank, item) in listed.iter().take(k).enumerate() {
                if let Some(i) = self.data.item_index(item) {
                    scores[i as usize] = (k - rank) as f32;
                }
            }
            scores
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20 users rating 15 items, each user a different mix (every rating ≥ 4 unless the pair's
    /// hash says otherwise).
    fn protocol() -> (tempfile::TempDir, Protocol) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut data = String::new();
        for u in 1..=20u32 {
            for i in 1..=15u32 {
                let h = (u * 31 + i * 17) % 7;
                if h < 5 {
                    let rating = if h == 0 { 2 } else { 4 + h % 2 };
                    data += &format!("{u}\t{i}\t{rating}\t{}\n", 880_000_000 + u * 100 + i);
                }
            }
        }
        std::fs::write(dir.path().join("u.data"), data).expect("write");
        let flags = vec!["0"; 19].join("|");
        let items: String = (1..=15)
            .map(|i| format!("{i}|Film {i} (1995)|01-Jan-1995||http://x|{flags}\n"))
            .collect();
        std::fs::write(dir.path().join("u.item"), items).expect("write");
        let protocol = Protocol::load(dir.path()).expect("load");
        (dir, protocol)
    }

    fn score(user: u32, item: u32) -> f32 {
        ((user * 7919 + item * 104_729) % 1000) as f32
    }

    #[test]
    fn served_lists_score_as_the_ranking_they_come_from() {
        let (_dir, p) = protocol();
        assert!(p.cells.iter().all(|c| c.weight == 1.0));
        let n = p.data.items.len();
        for split in p.splits(3) {
            assert!(
                !split.test.is_empty(),
                "{} split holds nothing out",
                split.name
            );
            let seen = p.train_items(&split);
            let lists: HashMap<String, Vec<String>> = p
                .test_users(&split)
                .into_iter()
                .map(|user| {
                    let u = p.data.user_index(&user).expect("user");
                    let mut ranked: Vec<u32> = (0..n as u32)
                        .filter(|&i| !seen[&user].contains(&p.data.items[i as usize]))
                        .collect();
                    ranked.sort_by(|&a, &b| score(u, b).total_cmp(&score(u, a)).then(a.cmp(&b)));
                    let list = ranked.iter().map(|&i| p.data.items[i as usize].clone());
                    (user, list.take(5).collect())
                })
                .collect();
            let offline = evaluate_with(n, &split.train, &split.test, 5, |u| {
                (0..n as u32).map(|i| score(u, i)).collect()
            });
            assert_eq!(
                p.evaluate_lists(&split, &lists, 5),
                offline,
                "{}",
                split.name
            );

            // A list of train items only, or an empty one, scores nothing and is still counted.
            let useless: HashMap<String, Vec<String>> = lists
                .keys()
                .map(|u| (u.clone(), seen[u].iter().cloned().collect()))
                .collect();
            let m = p.evaluate_lists(&split, &useless, 5);
            assert_eq!((m.users, m.ndcg, m.hit_rate), (offline.users, 0.0, 0.0));
            let m = p.evaluate_lists(&split, &HashMap::new(), 5);
            assert_eq!((m.users, m.ndcg), (offline.users, 0.0));
        }
    }

    #[test]
    fn train_events_are_the_positives_with_their_ratings() {
        let (_dir, p) = protocol();
        let [temporal, _] = p.splits(3);
        let events = p.events(&temporal.train);
        assert_eq!(events.len(), temporal.train.len());
        assert!(events.windows(2).all(|w| w[0].ts <= w[1].ts));
        assert!(
            events
                .iter()
                .all(|e| e.kind == EventKind::Rating && e.value.is_some_and(|v| v >= POSITIVE))
        );
        // Held-out positives are not sent.
        let held_out = &temporal.test[0];
        let (user, item) = (
            &p.data.users[held_out.user as usize],
            &p.data.items[held_out.item as usize],
        );
        assert!(
            !events
                .iter()
                .any(|e| &e.user_id == user && &e.item_id == item)
        );
    }
}
