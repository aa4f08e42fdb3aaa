//! The supervisor actor. It never uses ractor's default supervision handler (which stops the
//! parent when any child exits): a failed child is restarted from its factory after a backoff,
//! a child that stops normally stays stopped, and a child that fails past the restart budget
//! makes the supervisor fail too, handing the decision to its own parent.
//!
//! A child can fail three ways, counted apart: it panics, its callback returns an error, or it
//! hangs. Every `heartbeat_interval` the supervisor reads each child's [`Heartbeat`]; a child
//! that has stayed in one message longer than its [`ChildSpec::stuck_after`] limit is killed,
//! and its exit is then a failure like the others (same backoff, same budget).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use actors::obs::{ObsRegistry, Observed};
use prometheus::{IntCounterVec, register_int_counter_vec};
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent,
};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::backoff::{Decision, RestartPolicy, RestartTracker};
use crate::heartbeat::{Heartbeat, Panicked, Watched};

static FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "streamrec_supervisor_child_failures_total",
        "Supervised children that failed, by how: panic, error (returned by a callback) or kill \
         (stuck in one message past its limit).",
        &["failure"]
    )
    .expect("metric registers once")
});

/// Registers `streamrec_supervisor_child_failures_total` with every `failure` at 0, so that a
/// node's first failure is an increase that `rate()` and `increase()` see, not a new series they
/// miss. [`crate::Node::start`] calls it; calling it again changes nothing.
pub fn register_metrics() {
    for failure in [Failure::Panic, Failure::Error, Failure::Kill] {
        FAILURES.with_label_values(&[failure.name()]);
    }
}

type SpawnFuture = Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>;

/// What a child's factory spawns with: the supervisor to link the child to, and the heartbeat
/// through which the supervisor sees the child busy.
#[derive(Clone)]
pub struct Parent {
    supervisor: ActorCell,
    heartbeat: Heartbeat,
}

impl Parent {
    /// Spawns `actor` linked to the supervisor and watched by it (see [`crate::heartbeat`]).
    pub async fn spawn<A: Actor>(
        &self,
        actor: A,
        args: A::Arguments,
    ) -> Result<ActorRef<A::Msg>, SpawnErr> {
        let watched = Watched {
            actor,
            heartbeat: self.heartbeat.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, watched, args, self.supervisor.clone()).await?;
        Ok(actor)
    }
}

/// How to (re)start one child: a factory that spawns it through the given [`Parent`], an
/// optional hook run when it exits (to clear a slot callers read), and how long it may stay in
/// one message.
#[derive(Clone)]
pub struct ChildSpec {
    pub name: String,
    spawn: Arc<dyn Fn(Parent) -> SpawnFuture + Send + Sync>,
    on_exit: Option<Arc<dyn Fn() + Send + Sync>>,
    stuck_after: Option<Duration>,
}

impl ChildSpec {
    pub fn new<F, Fut>(name: impl Into<String>, spawn: F) -> Self
    where
        F: Fn(Parent) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
    {
        Self {
            name: name.into(),
            spawn: Arc::new(move |parent| Box::pin(spawn(parent))),
            on_exit: None,
            stuck_after: None,
        }
    }

    pub fn on_exit(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_exit = Some(Arc::new(hook));
        self
    }

    /// The child counts as hung once it has been in one message for `limit`: it is killed and
    /// restarted. Zero (the default) never does.
    pub fn stuck_after(mut self, limit: Duration) -> Self {
        self.stuck_after = (!limit.is_zero()).then_some(limit);
        self
    }
}

pub struct SupervisorArgs {
    pub kind: &'static str,
    pub children: Vec<ChildSpec>,
    pub policy: RestartPolicy,
    /// How often the children's heartbeats are checked (only if one has a `stuck_after`; zero
    /// never).
    pub heartbeat_interval: Duration,
    pub obs: Arc<ObsRegistry>,
}

pub enum SupervisorMsg {
    Respawn(usize),
    /// Stops a child by name and starts it again from its factory (an operator action).
    Restart(String, RpcReplyPort<Result<(), String>>),
    /// Looks for children stuck in one message past their limit.
    Heartbeat,
}

/// How a child failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    Panic,
    Error,
    Kill,
}

impl Failure {
    fn of(error: &ActorProcessingErr) -> Self {
        if Panicked::is_panic(error) {
            Self::Panic
        } else {
            Self::Error
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Panic => "panic",
            Self::Error => "error",
            Self::Kill => "kill",
        }
    }
}

/// Failures by kind: a panic, an error a callback returned, a kill of a child stuck in one
/// message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FailureCounts {
    pub num_panics: u64,
    pub num_errors: u64,
    pub num_kills: u64,
}

impl FailureCounts {
    fn count(&mut self, failure: Failure) {
        match failure {
            Failure::Panic => self.num_panics += 1,
            Failure::Error => self.num_errors += 1,
            Failure::Kill => self.num_kills += 1,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ChildObs {
    pub name: String,
    pub alive: bool,
    /// Restarts after a failure plus operator restarts.
    pub num_restarts: u64,
    #[serde(flatten)]
    pub failures: FailureCounts,
    /// The child's limit for one message, if it has one.
    pub stuck_after_ms: Option<u64>,
    pub last_failure: Option<String>,
    /// Epoch milliseconds.
    pub last_failure_at: Option<i64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SupervisorObs {
    pub children: Vec<ChildObs>,
    pub num_restarts: u64,
    /// Every child's failures, summed.
    #[serde(flatten)]
    pub failures: FailureCounts,
    pub num_escalations: u64,
}

struct Child {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    started: Instant,
    tracker: RestartTracker,
    /// Where the running instance marks itself busy; a new one per instance, so that a killed
    /// instance that lingers cannot mark its successor.
    heartbeat: Heartbeat,
    /// Set while an operator restart is stopping the child, so its exit is not a failure.
    restarting: bool,
    /// Set once the child was killed for being stuck, to how long it had been in its message.
    killed_after: Option<Duration>,
}

pub struct SupervisorState {
    args_policy: RestartPolicy,
    registry: Arc<ObsRegistry>,
    children: Vec<Child>,
    obs: Observed<SupervisorObs>,
    heartbeats: Option<JoinHandle<()>>,
}

pub struct Supervisor;

impl SupervisorState {
    async fn spawn(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        index: usize,
    ) -> Result<(), SpawnErr> {
        let child = &mut self.children[index];
        child.heartbeat = Heartbeat::default();
        let parent = Parent {
            supervisor: myself.get_cell(),
            heartbeat: child.heartbeat.clone(),
        };
        let cell = (child.spec.spawn)(parent).await?;
        self.registry.label(&cell, child.spec.name.clone());
        child.cell = Some(cell);
        child.started = Instant::now();
        self.obs.update(|o| o.children[index].alive = true);
        Ok(())
    }

    fn find(&self, cell: &ActorCell) -> Option<usize> {
        self.children.iter().position(|c| {
            c.cell
                .as_ref()
                .is_some_and(|own| own.get_id() == cell.get_id())
        })
    }

    fn exited(&mut self, index: usize) {
        let child = &mut self.children[index];
        child.cell = None;
        child.killed_after = None;
        if let Some(hook) = &child.spec.on_exit {
            hook();
        }
        self.obs.update(|o| o.children[index].alive = false);
    }

    /// Kills every child that has been in one message longer than its limit.
    fn kill_stuck(&mut self) {
        let now = tokio::time::Instant::now();
        for child in &mut self.children {
            let (Some(limit), Some(cell), None) =
                (child.spec.stuck_after, &child.cell, child.killed_after)
            else {
                continue;
            };
            let Some(busy_for) = child.heartbeat.busy_since().map(|t| now - t) else {
                continue;
            };
            if busy_for >= limit {
                tracing::warn!(
                    child = %child.spec.name,
                    busy_ms = busy_for.as_millis() as u64,
                    limit_ms = limit.as_millis() as u64,
                    "child stuck in one message; killing it"
                );
                child.killed_after = Some(busy_for);
                cell.kill();
            }
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let initial = SupervisorObs {
            children: args
                .children
                .iter()
                .map(|c| ChildObs {
                    name: c.name.clone(),
                    stuck_after_ms: c.stuck_after.map(|d| d.as_millis() as u64),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let obs = Observed::register(&args.obs, &myself.get_cell(), args.kind, initial);
        let children = args
            .children
            .into_iter()
            .map(|spec| Child {
                spec,
                cell: None,
                started: Instant::now(),
                tracker: RestartTracker::default(),
                heartbeat: Heartbeat::default(),
                restarting: false,
                killed_after: None,
            })
            .collect();
        let mut state = SupervisorState {
            args_policy: args.policy,
            registry: args.obs,
            children,
            obs,
            heartbeats: None,
        };
        for index in 0..state.children.len() {
            state.spawn(&myself, index).await?;
        }
        if !args.heartbeat_interval.is_zero()
            && state.children.iter().any(|c| c.spec.stuck_after.is_some())
        {
            state.heartbeats = Some(actors::mailbox::tell_every(
                myself.clone(),
                args.heartbeat_interval,
                || SupervisorMsg::Heartbeat,
            ));
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(heartbeats) = state.heartbeats.take() {
            heartbeats.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.obs.handled();
        match msg {
            SupervisorMsg::Respawn(index) => {
                if state.children[index].cell.is_none()
                    && let Err(error) = state.spawn(&myself, index).await
                {
                    let name = state.children[index].spec.name.clone();
                    tracing::warn!(child = %name, %error, "child failed to restart");
                    let failure = match &error {
                        SpawnErr::StartupFailed(e) => Failure::of(e),
                        _ => Failure::Error,
                    };
                    let message = format!("restart failed: {error}");
                    schedule_restart(&myself, state, index, failure, message)?;
                }
            }
            SupervisorMsg::Restart(name, reply) => {
                let Some(index) = state.children.iter().position(|c| c.spec.name == name) else {
                    let _ = reply.send(Err(format!("no child named {name}")));
                    return Ok(());
                };
                if let Some(cell) = state.children[index].cell.clone() {
                    state.children[index].restarting = true;
                    let _ = cell
                        .stop_and_wait(
                            Some("restarted by operator".into()),
                            Some(actors::CALL_TIMEOUT),
                        )
                        .await;
                }
                // The exit event may still be queued; restart now and ignore it when it arrives.
                state.exited(index);
                let result = state.spawn(&myself, index).await.map_err(|e| e.to_string());
                // Counted before the reply, so that whoever asked sees the restart counted.
                state.obs.update(|o| {
                    o.num_restarts += 1;
                    o.children[index].num_restarts += 1;
                });
                let _ = reply.send(result);
            }
            SupervisorMsg::Heartbeat => state.kill_stuck(),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some(index) = state.find(&cell) else {
                    return Ok(());
                };
                let name = state.children[index].spec.name.clone();
                tracing::warn!(child = %name, %error, "child failed");
                // Forgotten now, not when ractor drops the failed actor's state, so that the tree
                // never shows it beside its replacement.
                state.registry.deregister(&cell);
                state.exited(index);
                schedule_restart(
                    &myself,
                    state,
                    index,
                    Failure::of(&error),
                    error.to_string(),
                )?;
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let Some(index) = state.find(&cell) else {
                    return Ok(());
                };
                if let Some(busy_for) = state.children[index].killed_after {
                    // Nor did a killed one's.
                    state.registry.deregister(&cell);
                    state.exited(index);
                    let message = format!(
                        "stuck in one message for {}ms; killed",
                        busy_for.as_millis()
                    );
                    schedule_restart(&myself, state, index, Failure::Kill, message)?;
                } else if !std::mem::take(&mut state.children[index].restarting) {
                    tracing::info!(child = %state.children[index].spec.name, ?reason, "child stopped");
                    state.exited(index);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Counts a failure and either schedules a respawn after the backoff or escalates.
fn schedule_restart(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    index: usize,
    failure: Failure,
    message: String,
) -> Result<(), ActorProcessingErr> {
    FAILURES.with_label_values(&[failure.name()]).inc();
    let child = &mut state.children[index];
    let decision = child
        .tracker
        .on_failure(&state.args_policy, child.started, Instant::now());
    state.obs.update(|o| {
        o.failures.count(failure);
        let obs = &mut o.children[index];
        obs.failures.count(failure);
        obs.last_failure = Some(message);
        obs.last_failure_at = Some(common::now_millis());
        match decision {
            Decision::RestartAfter(_) => {
                obs.num_restarts += 1;
                o.num_restarts += 1;
            }
            Decision::Escalate => o.num_escalations += 1,
        }
    });
    match decision {
        Decision::RestartAfter(delay) => {
            actors::mailbox::tell_after(myself.clone(), delay, move || {
                SupervisorMsg::Respawn(index)
            });
            Ok(())
        }
        Decision::Escalate => Err(format!(
            "child {} failed more than {} times within {:?}; escalating",
            child.spec.name, state.args_policy.max_restarts, state.args_policy.window
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use testkit::wait_until;

    use super::*;

    /// A child that panics, errors or hangs on command.
    struct Faulty;
    enum FaultyMsg {
        Panic,
        Error,
        /// Never returns (until killed).
        Hang,
        /// Says it started, then answers once the gate opens.
        Work {
            started: tokio::sync::oneshot::Sender<()>,
            gate: tokio::sync::oneshot::Receiver<()>,
            reply: RpcReplyPort<()>,
        },
    }

    impl Actor for Faulty {
        type Msg = FaultyMsg;
        type State = Observed<()>;
        type Arguments = Arc<ObsRegistry>;
        async fn pre_start(
            &self,
            myself: ActorRef<FaultyMsg>,
            registry: Arc<ObsRegistry>,
        ) -> Result<Observed<()>, ActorProcessingErr> {
            Ok(Observed::register(
                &registry,
                &myself.get_cell(),
                "faulty",
                (),
            ))
        }
        async fn handle(
            &self,
            _: ActorRef<FaultyMsg>,
            msg: FaultyMsg,
            _: &mut Observed<()>,
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                FaultyMsg::Panic => panic!("told to panic"),
                FaultyMsg::Error => Err("told to fail".into()),
                FaultyMsg::Hang => std::future::pending().await,
                FaultyMsg::Work {
                    started,
                    gate,
                    reply,
                } => {
                    let _ = started.send(());
                    let _ = gate.await;
                    let _ = reply.send(());
                    Ok(())
                }
            }
        }
    }

    type Current = Arc<parking_lot::Mutex<Option<ActorRef<FaultyMsg>>>>;

    fn faulty_spec(
        spawned: Arc<AtomicUsize>,
        current: Current,
        registry: &Arc<ObsRegistry>,
    ) -> ChildSpec {
        let registry = registry.clone();
        ChildSpec::new("faulty", move |parent| {
            let (spawned, current, registry) = (spawned.clone(), current.clone(), registry.clone());
            async move {
                let actor = parent.spawn(Faulty, registry).await?;
                spawned.fetch_add(1, Ordering::SeqCst);
                *current.lock() = Some(actor.clone());
                Ok(actor.get_cell())
            }
        })
    }

    /// A supervisor of one faulty child, with quick heartbeats.
    fn args(spec: ChildSpec, policy: RestartPolicy, registry: &Arc<ObsRegistry>) -> SupervisorArgs {
        SupervisorArgs {
            kind: "test_supervisor",
            children: vec![spec],
            policy,
            heartbeat_interval: Duration::from_millis(20),
            obs: registry.clone(),
        }
    }

    fn quick_restarts(max_restarts: usize) -> RestartPolicy {
        RestartPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            max_restarts,
            window: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn restarts_a_child_after_panic_and_error_then_escalates() {
        let spawned = Arc::new(AtomicUsize::new(0));
        let current: Current = Arc::default();
        let registry = Arc::default();
        let spec = faulty_spec(spawned.clone(), current.clone(), &registry);
        let args = args(spec, quick_restarts(2), &registry);
        let (sup, handle) = Actor::spawn(None, Supervisor, args).await.expect("spawn");
        assert_eq!(spawned.load(Ordering::SeqCst), 1);

        let child = current.lock().clone().expect("child");
        child.cast(FaultyMsg::Panic).expect("send");
        assert!(
            wait_until(
                async || spawned.load(Ordering::SeqCst) == 2,
                Duration::from_secs(5)
            )
            .await,
            "restart after panic"
        );

        let child = current.lock().clone().expect("child");
        child.cast(FaultyMsg::Error).expect("send");
        assert!(
            wait_until(
                async || spawned.load(Ordering::SeqCst) == 3,
                Duration::from_secs(5)
            )
            .await,
            "restart after error"
        );

        // A third failure within the window exceeds max_restarts = 2: the supervisor fails.
        let child = current.lock().clone().expect("child");
        child.cast(FaultyMsg::Panic).expect("send");
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("supervisor stops")
            .expect("join");
        assert_eq!(sup.get_status(), ractor::ActorStatus::Stopped);
        assert_eq!(spawned.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn operator_restart_replaces_the_child() {
        let spawned = Arc::new(AtomicUsize::new(0));
        let current: Current = Arc::default();
        let registry = Arc::default();
        let spec = faulty_spec(spawned.clone(), current.clone(), &registry);
        let args = args(spec, RestartPolicy::default(), &registry);
        let (sup, _) = Actor::spawn(None, Supervisor, args).await.expect("spawn");
        let first = current.lock().clone().expect("child").get_id();
        let result = sup
            .call(
                |r| SupervisorMsg::Restart("faulty".into(), r),
                Some(Duration::from_secs(5)),
            )
            .await
            .expect("call");
        assert!(matches!(result, ractor::rpc::CallResult::Success(Ok(()))));
        assert_eq!(spawned.load(Ordering::SeqCst), 2);
        assert_ne!(current.lock().clone().expect("child").get_id(), first);
        sup.stop(None);
    }

    /// Restarts, then failures by kind.
    fn counts(num_restarts: u64, failures: FailureCounts) -> [u64; 4] {
        let FailureCounts {
            num_panics,
            num_errors,
            num_kills,
        } = failures;
        [num_restarts, num_panics, num_errors, num_kills]
    }

    fn totals(state: &SupervisorObs) -> [u64; 4] {
        counts(state.num_restarts, state.failures)
    }

    #[tokio::test]
    async fn a_child_stuck_in_one_message_is_killed_and_counted_apart_from_panics_and_errors() {
        let spawned = Arc::new(AtomicUsize::new(0));
        let current: Current = Arc::default();
        // Far above the few heartbeats (20ms each) that the work below spans, even on a busy
        // machine.
        let limit = Duration::from_secs(1);
        let registry = Arc::default();
        let spec = faulty_spec(spawned.clone(), current.clone(), &registry).stuck_after(limit);
        let args = args(spec, quick_restarts(10), &registry);
        let (sup, _) = Actor::spawn(None, Supervisor, args).await.expect("spawn");
        let state = || {
            registry
                .get::<SupervisorObs>(&sup.get_cell())
                .expect("registered")
        };
        let child = || current.lock().clone().expect("child");
        assert_eq!(state().children[0].stuck_after_ms, Some(1000));

        let panicked = child().get_cell();
        child().cast(FaultyMsg::Panic).expect("send");
        assert!(
            wait_until(
                async || spawned.load(Ordering::SeqCst) == 2,
                Duration::from_secs(5)
            )
            .await
        );
        assert_eq!(totals(&state()), [1, 1, 0, 0]);
        // A failed actor is forgotten; its replacement is there.
        assert!(!registry.contains(&panicked));
        assert!(registry.contains(&child().get_cell()));

        child().cast(FaultyMsg::Error).expect("send");
        assert!(
            wait_until(
                async || spawned.load(Ordering::SeqCst) == 3,
                Duration::from_secs(5)
            )
            .await
        );
        assert_eq!(totals(&state()), [2, 1, 1, 0]);

        // Work within the limit is left alone, however many heartbeats it spans.
        let beats = || {
            actors::mailbox::stats(&sup.get_cell())
                .expect("stats")
                .handled
        };
        let (started, is_started) = tokio::sync::oneshot::channel();
        let (release, gate) = tokio::sync::oneshot::channel();
        let worker = child();
        let work = tokio::spawn(async move {
            let work = |reply| FaultyMsg::Work {
                started,
                gate,
                reply,
            };
            worker.call(work, Some(Duration::from_secs(10))).await
        });
        is_started.await.expect("the work started");
        let before = beats();
        assert!(wait_until(async || beats() > before + 3, Duration::from_secs(5)).await);
        release.send(()).expect("still working");
        let answered = work.await.expect("join").expect("call");
        assert!(matches!(answered, ractor::rpc::CallResult::Success(())));
        assert_eq!(spawned.load(Ordering::SeqCst), 3);

        // A message that never ends is killed once the limit passed, and the child restarted.
        let hung = child().get_cell();
        child().cast(FaultyMsg::Hang).expect("send");
        assert!(
            wait_until(
                async || spawned.load(Ordering::SeqCst) == 4,
                Duration::from_secs(5)
            )
            .await
        );
        assert_ne!(child().get_id(), hung.get_id());
        assert!(
            !registry.contains(&hung),
            "a killed actor is deregistered too"
        );
        let now = state();
        assert_eq!(totals(&now), [3, 1, 1, 1]);
        let child_state = &now.children[0];
        assert_eq!(
            counts(child_state.num_restarts, child_state.failures),
            [3, 1, 1, 1]
        );
        assert!(
            child_state
                .last_failure
                .as_deref()
                .is_some_and(|f| f.starts_with("stuck in one message")),
            "{now:?}"
        );

        // An idle child is never taken for a stuck one: wait out more than the limit in
        // heartbeats, and nothing more happened.
        let before = beats();
        assert!(wait_until(async || beats() > before + 60, Duration::from_secs(10)).await);
        assert_eq!(spawned.load(Ordering::SeqCst), 4);
        assert_eq!(totals(&state()), [3, 1, 1, 1]);
        sup.stop(None);
    }

    #[tokio::test]
    async fn kills_spend_the_restart_budget_like_other_failures() {
        let spawned = Arc::new(AtomicUsize::new(0));
        let current: Current = Arc::default();
        let registry = Arc::default();
        let spec = faulty_spec(spawned.clone(), current.clone(), &registry)
            .stuck_after(Duration::from_millis(50));
        let args = args(spec, quick_restarts(1), &registry);
        let (sup, handle) = Actor::spawn(None, Supervisor, args).await.expect("spawn");
        // Watched from the start: the state outlives the supervisor that escalated.
        let watched = registry
            .watch::<SupervisorObs>(&sup.get_cell())
            .expect("registered");
        current
            .lock()
            .clone()
            .expect("child")
            .cast(FaultyMsg::Hang)
            .expect("send");
        assert!(
            wait_until(
                async || spawned.load(Ordering::SeqCst) == 2,
                Duration::from_secs(5)
            )
            .await
        );
        current
            .lock()
            .clone()
            .expect("child")
            .cast(FaultyMsg::Hang)
            .expect("send");
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("the supervisor escalates")
            .expect("join");
        assert_eq!(sup.get_status(), ractor::ActorStatus::Stopped);
        assert_eq!(spawned.load(Ordering::SeqCst), 2);
        assert!(
            !registry.contains(&sup.get_cell()),
            "a stopped actor is forgotten"
        );
        let last = watched.borrow().clone();
        assert_eq!(totals(&last), [1, 0, 0, 2]);
        assert_eq!(last.num_escalations, 1);
    }
}
