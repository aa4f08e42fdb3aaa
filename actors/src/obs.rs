//! Observable state: every actor registers a watch channel carrying a small JSON snapshot of
//! itself. The console and `GET /v1/admin/actors` read these snapshots and walk ractor's own
//! supervision links, so inspecting the tree never sends a message to (or waits on) an actor.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use parking_lot::RwLock;
use ractor::{ActorCell, ActorId};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;

#[derive(Clone)]
struct Entry {
    kind: &'static str,
    started_at: i64,
    state: watch::Receiver<Value>,
}

#[derive(Default)]
pub struct ObsRegistry {
    entries: RwLock<HashMap<ActorId, Entry>>,
    /// Names given by parents (`model-0`, a user id); ractor names are process-global, so
    /// actors stay unnamed there and are labelled here instead.
    labels: RwLock<HashMap<ActorId, String>>,
}

/// The publishing side of one actor's observable state.
pub struct Obs<T> {
    tx: watch::Sender<Value>,
    mailbox: Arc<crate::mailbox::Counters>,
    _kind: PhantomData<fn(T)>,
}

impl<T: Serialize> Obs<T> {
    pub fn publish(&self, state: &T) {
        self.tx
            .send_replace(serde_json::to_value(state).unwrap_or(Value::Null));
    }

    /// Counts one message handled; every actor calls it first thing in `handle`.
    pub fn handled(&self) {
        self.mailbox.handled();
    }
}

impl ObsRegistry {
    pub fn register<T: Serialize>(
        &self,
        actor: &ActorCell,
        kind: &'static str,
        initial: &T,
    ) -> Arc<Obs<T>> {
        let (tx, rx) = watch::channel(serde_json::to_value(initial).unwrap_or(Value::Null));
        let entry = Entry {
            kind,
            started_at: common::now_millis(),
            state: rx,
        };
        self.entries.write().insert(actor.get_id(), entry);
        Arc::new(Obs {
            tx,
            mailbox: crate::mailbox::attach(actor),
            _kind: PhantomData,
        })
    }

    pub fn deregister(&self, actor: &ActorCell) {
        self.entries.write().remove(&actor.get_id());
        self.labels.write().remove(&actor.get_id());
        crate::mailbox::detach(actor);
    }

    /// Names an actor for the console.
    pub fn label(&self, actor: &ActorCell, name: impl Into<String>) {
        self.labels.write().insert(actor.get_id(), name.into());
    }

    fn name(&self, cell: &ActorCell) -> Option<String> {
        cell.get_name()
            .or_else(|| self.labels.read().get(&cell.get_id()).cloned())
    }

    /// The observable state an actor last published (`None` for an actor not registered).
    pub fn state(&self, cell: &ActorCell) -> Option<Value> {
        let entries = self.entries.read();
        Some(entries.get(&cell.get_id())?.state.borrow().clone())
    }

    /// One actor's snapshot: kind, status, uptime, mailbox and observable state.
    pub fn describe(&self, cell: &ActorCell) -> Value {
        let entry = self.entries.read().get(&cell.get_id()).cloned();
        let (kind, started_at, state) = match entry {
            Some(e) => (e.kind, Some(e.started_at), e.state.borrow().clone()),
            None => ("unknown", None, Value::Null),
        };
        json!({
            "id": cell.get_id().to_string(),
            "name": self.name(cell),
            "kind": kind,
            "status": format!("{:?}", cell.get_status()).to_lowercase(),
            "uptime_ms": started_at.map(|t| common::now_millis() - t),
            "mailbox": crate::mailbox::stats(cell).map(|m| json!({
                "depth": m.depth,
                "handled": m.handled,
                "rate": (m.rate * 10.0).round() / 10.0,
            })),
            "state": state,
        })
    }

    /// Finds the actor with `id` (as the tree prints it) under `root`, with its parent.
    pub fn find(&self, root: &ActorCell, id: &str) -> Option<(ActorCell, Option<ActorCell>)> {
        fn walk(
            cell: &ActorCell,
            parent: Option<&ActorCell>,
            id: &str,
        ) -> Option<(ActorCell, Option<ActorCell>)> {
            if cell.get_id().to_string() == id {
                return Some((cell.clone(), parent.cloned()));
            }
            cell.get_children()
                .iter()
                .find_map(|child| walk(child, Some(cell), id))
        }
        walk(root, None, id)
    }

    /// The kind an actor registered as (`unknown` if it did not).
    pub fn kind(&self, cell: &ActorCell) -> &'static str {
        self.entries
            .read()
            .get(&cell.get_id())
            .map_or("unknown", |e| e.kind)
    }

    /// The name a parent gave an actor, if any.
    pub fn label_of(&self, cell: &ActorCell) -> Option<String> {
        self.name(cell)
    }

    /// The supervision tree under `root`, listing at most `max_children` children per actor.
    pub fn tree(&self, root: &ActorCell, max_children: usize) -> Value {
        let mut node = self.describe(root);
        let mut children = root.get_children();
        children.sort_by_key(|c| self.name(c).unwrap_or_default());
        node["num_children"] = json!(children.len());
        node["children"] = Value::Array(
            children
                .iter()
                .take(max_children)
                .map(|c| self.tree(c, max_children))
                .collect(),
        );
        node
    }
}
