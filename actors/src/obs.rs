//! Observable state: every actor keeps what it wants the console to see in an [`Observed<T>`],
//! a typed value shared with the node's [`ObsRegistry`]. The console and `GET /v1/admin/actors`
//! read these values and walk ractor's own supervision links, so inspecting the tree never sends a
//! message to (or waits on) an actor. Readers in Rust get the typed value back ([`ObsRegistry::get`]);
//! JSON is made only at the HTTP edge ([`ObsRegistry::describe`], [`ObsRegistry::tree`]).
//!
//! `Observed<T>` does the wiring every actor used to write by hand: it registers on creation,
//! counts handled messages, makes every change visible at once, and deregisters when dropped,
//! which ractor does with an actor's state however the actor ends (stopped, failed or killed).

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use ractor::{ActorCell, ActorId};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;

/// What an actor can publish: a plain serialisable value.
pub trait Observable: Serialize + Clone + Send + Sync + 'static {}
impl<T: Serialize + Clone + Send + Sync + 'static> Observable for T {}

/// The registry's view of one actor's state, whatever its type.
trait Snapshot: Send + Sync {
    fn json(&self) -> Value;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Observable> Snapshot for watch::Receiver<T> {
    fn json(&self) -> Value {
        serde_json::to_value(&*self.borrow()).unwrap_or(Value::Null)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[derive(Clone)]
struct Entry {
    kind: &'static str,
    started_at: i64,
    state: Arc<dyn Snapshot>,
}

#[derive(Default)]
pub struct ObsRegistry {
    entries: RwLock<HashMap<ActorId, Entry>>,
    /// Names given by parents (`model-0`, a user id); ractor names are process-global, so
    /// actors stay unnamed there and are labelled here instead.
    labels: RwLock<HashMap<ActorId, String>>,
}

/// One actor's observable state, owned by the actor (keep it in the actor's `State`).
pub struct Observed<T: Observable> {
    tx: watch::Sender<T>,
    registry: Arc<ObsRegistry>,
    actor: ActorCell,
    mailbox: Arc<crate::mailbox::Counters>,
}

impl<T: Observable> Observed<T> {
    /// Registers `actor` (of `kind`, as the console names it) with its initial state.
    pub fn register(
        registry: &Arc<ObsRegistry>,
        actor: &ActorCell,
        kind: &'static str,
        initial: T,
    ) -> Self {
        let (tx, rx) = watch::channel(initial);
        let entry = Entry {
            kind,
            started_at: common::now_millis(),
            state: Arc::new(rx),
        };
        registry.entries.write().insert(actor.get_id(), entry);
        Self {
            tx,
            registry: registry.clone(),
            actor: actor.clone(),
            mailbox: crate::mailbox::attach(actor),
        }
    }

    /// Counts one message handled; every actor calls it first thing in `handle`.
    pub fn handled(&self) {
        self.mailbox.handled();
    }

    /// Changes the state; readers see the change at once.
    pub fn update<R>(&self, change: impl FnOnce(&mut T) -> R) -> R {
        let mut result = None;
        self.tx.send_modify(|state| result = Some(change(state)));
        result.expect("send_modify runs its closure")
    }

    /// The current state.
    pub fn get(&self) -> watch::Ref<'_, T> {
        self.tx.borrow()
    }
}

impl<T: Observable> Drop for Observed<T> {
    fn drop(&mut self) {
        self.registry.deregister(&self.actor);
    }
}

impl ObsRegistry {
    /// Forgets an actor; an actor's `Observed` does it when dropped, a supervisor may do it
    /// earlier for a child it saw fail.
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

    fn entry(&self, cell: &ActorCell) -> Option<Entry> {
        self.entries.read().get(&cell.get_id()).cloned()
    }

    /// The state an actor last published, typed (`None` for an actor not registered, or one
    /// whose state is of another type).
    pub fn get<T: Observable>(&self, cell: &ActorCell) -> Option<T> {
        let entry = self.entry(cell)?;
        let rx = entry.state.as_any().downcast_ref::<watch::Receiver<T>>()?;
        Some(rx.borrow().clone())
    }

    /// Follows an actor's typed state; the receiver keeps the last value after the actor is gone.
    pub fn watch<T: Observable>(&self, cell: &ActorCell) -> Option<watch::Receiver<T>> {
        let entry = self.entry(cell)?;
        entry
            .state
            .as_any()
            .downcast_ref::<watch::Receiver<T>>()
            .cloned()
    }

    /// Whether an actor is registered.
    pub fn contains(&self, cell: &ActorCell) -> bool {
        self.entries.read().contains_key(&cell.get_id())
    }

    /// The typed state of every actor of `kind` under `root`.
    pub fn all<T: Observable>(&self, root: &ActorCell, kind: &str) -> Vec<T> {
        let mut found = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(cell) = stack.pop() {
            if self.kind(&cell) == kind
                && let Some(state) = self.get::<T>(&cell)
            {
                found.push(state);
            }
            stack.extend(cell.get_children());
        }
        found
    }

    /// One actor's snapshot: kind, status, uptime, mailbox and observable state.
    pub fn describe(&self, cell: &ActorCell) -> Value {
        let (kind, started_at, state) = match self.entry(cell) {
            Some(e) => (e.kind, Some(e.started_at), e.state.json()),
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
