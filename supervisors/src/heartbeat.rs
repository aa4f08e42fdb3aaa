//! What a supervisor sees of a child's work: since when the child has been in its current
//! message, and whether a failure was a panic or an error it returned.
//!
//! ractor runs `handle` without telling anyone when a message starts or ends, and hands a
//! supervisor a panic as the same boxed error a returned `Err` becomes. So every supervised child
//! runs inside [`Watched`], which delegates each callback to the actor and around it marks the
//! child busy on its [`Heartbeat`] and turns a panic into a [`Panicked`] error. The supervisor's
//! periodic check reads the heartbeat (it never sends the child a message), as quickwit's
//! supervisors read their actors' progress on each heartbeat, and kills a child that has stayed in
//! one message past its limit. No actor has to do anything for it.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::time::Instant;

/// Since when one child has been busy in a callback (`None` while it waits for a message).
#[derive(Clone, Debug, Default)]
pub struct Heartbeat(Arc<Mutex<Option<Instant>>>);

impl Heartbeat {
    /// When the child's current message started, if it is in one.
    pub fn busy_since(&self) -> Option<Instant> {
        *self.0.lock()
    }

    /// Marks the child busy until the guard drops: when the callback returns, panics or is
    /// dropped because the child was killed.
    fn enter(&self) -> Busy<'_> {
        *self.0.lock() = Some(Instant::now());
        Busy(self)
    }
}

struct Busy<'a>(&'a Heartbeat);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        *self.0.0.lock() = None;
    }
}

/// A panic in a child's callback, as the error its supervisor receives.
#[derive(Debug)]
pub struct Panicked(pub String);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "panicked: {}", self.0)
    }
}

impl std::error::Error for Panicked {}

impl Panicked {
    fn from_payload(payload: Box<dyn Any + Send>) -> Self {
        let message = match payload.downcast::<String>() {
            Ok(message) => *message,
            Err(payload) => payload.downcast_ref::<&str>().map_or_else(
                || "a panic without a message".to_owned(),
                |s| (*s).to_owned(),
            ),
        };
        Self(message)
    }

    /// Whether a child's failure was a panic (rather than an error it returned).
    pub fn is_panic(error: &ActorProcessingErr) -> bool {
        error.downcast_ref::<Panicked>().is_some()
    }
}

/// Runs a callback, marking the child busy meanwhile and catching a panic as [`Panicked`].
async fn watch<T>(
    heartbeat: &Heartbeat,
    callback: impl Future<Output = Result<T, ActorProcessingErr>>,
) -> Result<T, ActorProcessingErr> {
    let _busy = heartbeat.enter();
    AssertUnwindSafe(callback)
        .catch_unwind()
        .await
        .unwrap_or_else(|payload| Err(Panicked::from_payload(payload).into()))
}

/// An actor run under supervision: the same messages, arguments and state as `A`.
pub struct Watched<A> {
    pub(crate) actor: A,
    pub(crate) heartbeat: Heartbeat,
}

impl<A: Actor> Actor for Watched<A> {
    type Msg = A::Msg;
    type State = A::State;
    type Arguments = A::Arguments;

    async fn pre_start(
        &self,
        myself: ActorRef<A::Msg>,
        args: A::Arguments,
    ) -> Result<A::State, ActorProcessingErr> {
        // Start-up is awaited by the supervisor itself; only its panics are told apart here.
        AssertUnwindSafe(self.actor.pre_start(myself, args))
            .catch_unwind()
            .await
            .unwrap_or_else(|payload| Err(Panicked::from_payload(payload).into()))
    }

    async fn post_start(
        &self,
        myself: ActorRef<A::Msg>,
        state: &mut A::State,
    ) -> Result<(), ActorProcessingErr> {
        watch(&self.heartbeat, self.actor.post_start(myself, state)).await
    }

    async fn post_stop(
        &self,
        myself: ActorRef<A::Msg>,
        state: &mut A::State,
    ) -> Result<(), ActorProcessingErr> {
        watch(&self.heartbeat, self.actor.post_stop(myself, state)).await
    }

    async fn handle(
        &self,
        myself: ActorRef<A::Msg>,
        message: A::Msg,
        state: &mut A::State,
    ) -> Result<(), ActorProcessingErr> {
        watch(&self.heartbeat, self.actor.handle(myself, message, state)).await
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<A::Msg>,
        event: SupervisionEvent,
        state: &mut A::State,
    ) -> Result<(), ActorProcessingErr> {
        watch(
            &self.heartbeat,
            self.actor.handle_supervisor_evt(myself, event, state),
        )
        .await
    }
}
