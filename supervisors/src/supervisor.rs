//! The supervisor actor. It never uses ractor's default supervision handler (which stops the
//! parent when any child exits): a failed child is restarted from its factory after a backoff,
//! a child that stops normally stays stopped, and a child that fails past the restart budget
//! makes the supervisor fail too, handing the decision to its own parent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use actors::obs::{Obs, ObsRegistry};
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent,
};
use serde::Serialize;

use crate::backoff::{Decision, RestartPolicy, RestartTracker};

type SpawnFuture = Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>;

/// How to (re)start one child: a factory that spawns it linked to the given supervisor, and
/// an optional hook run when it exits (to clear a slot callers read).
#[derive(Clone)]
pub struct ChildSpec {
    pub name: String,
    spawn: Arc<dyn Fn(ActorCell) -> SpawnFuture + Send + Sync>,
    on_exit: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl ChildSpec {
    pub fn new<F, Fut>(name: impl Into<String>, spawn: F) -> Self
    where
        F: Fn(ActorCell) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
    {
        Self {
            name: name.into(),
            spawn: Arc::new(move |sup| Box::pin(spawn(sup))),
            on_exit: None,
        }
    }

    pub fn on_exit(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_exit = Some(Arc::new(hook));
        self
    }
}

pub struct SupervisorArgs {
    pub kind: &'static str,
    pub children: Vec<ChildSpec>,
    pub policy: RestartPolicy,
    pub obs: Arc<ObsRegistry>,
}

pub enum SupervisorMsg {
    Respawn(usize),
    /// Stops a child by name and starts it again from its factory (an operator action).
    Restart(String, RpcReplyPort<Result<(), String>>),
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ChildObs {
    pub name: String,
    pub alive: bool,
    pub num_restarts: u64,
    pub last_failure: Option<String>,
    /// Epoch milliseconds.
    pub last_failure_at: Option<i64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SupervisorObs {
    pub children: Vec<ChildObs>,
    pub num_restarts: u64,
    pub num_escalations: u64,
}

struct Child {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    started: Instant,
    tracker: RestartTracker,
    /// Set while an operator restart is stopping the child, so its exit is not a failure.
    restarting: bool,
}

pub struct SupervisorState {
    args_policy: RestartPolicy,
    registry: Arc<ObsRegistry>,
    children: Vec<Child>,
    obs_state: SupervisorObs,
    obs: Arc<Obs<SupervisorObs>>,
}

pub struct Supervisor;

impl SupervisorState {
    async fn spawn(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        index: usize,
    ) -> Result<(), SpawnErr> {
        let child = &mut self.children[index];
        let cell = (child.spec.spawn)(myself.get_cell()).await?;
        self.registry.label(&cell, child.spec.name.clone());
        child.cell = Some(cell);
        child.started = Instant::now();
        self.obs_state.children[index].alive = true;
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
        if let Some(hook) = &child.spec.on_exit {
            hook();
        }
        self.obs_state.children[index].alive = false;
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
        let obs_state = SupervisorObs {
            children: args
                .children
                .iter()
                .map(|c| ChildObs {
                    name: c.name.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let obs = args.obs.register(&myself.get_cell(), args.kind, &obs_state);
        let children = args
            .children
            .into_iter()
            .map(|spec| Child {
                spec,
                cell: None,
                started: Instant::now(),
                tracker: RestartTracker::default(),
                restarting: false,
            })
            .collect();
        let mut state = SupervisorState {
            args_policy: args.policy,
            registry: args.obs,
            children,
            obs_state,
            obs,
        };
        for index in 0..state.children.len() {
            state.spawn(&myself, index).await?;
        }
        state.obs.publish(&state.obs_state);
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.registry.deregister(&myself.get_cell());
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
                    schedule_restart(&myself, state, index, format!("restart failed: {error}"))?;
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
                state.obs_state.num_restarts += 1;
                state.obs_state.children[index].num_restarts += 1;
                // Published before the reply, so that whoever asked sees the restart counted.
                state.obs.publish(&state.obs_state);
                let _ = reply.send(result);
            }
        }
        state.obs.publish(&state.obs_state);
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
                state.exited(index);
                schedule_restart(&myself, state, index, error.to_string())?;
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let Some(index) = state.find(&cell) else {
                    return Ok(());
                };
                if !std::mem::take(&mut state.children[index].restarting) {
                    tracing::info!(child = %state.children[index].spec.name, ?reason, "child stopped");
                    state.exited(index);
                }
            }
            _ => {}
        }
        state.obs.publish(&state.obs_state);
        Ok(())
    }
}

/// Records a failure and either schedules a respawn after the backoff or escalates.
fn schedule_restart(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    index: usize,
    failure: String,
) -> Result<(), ActorProcessingErr> {
    let child = &mut state.children[index];
    let decision = child
        .tracker
        .on_failure(&state.args_policy, child.started, Instant::now());
    let obs = &mut state.obs_state.children[index];
    obs.last_failure = Some(failure);
    obs.last_failure_at = Some(common::now_millis());
    match decision {
        Decision::RestartAfter(delay) => {
            obs.num_restarts += 1;
            state.obs_state.num_restarts += 1;
            actors::mailbox::tell_after(myself.clone(), delay, move || {
                SupervisorMsg::Respawn(index)
            });
            Ok(())
        }
        Decision::Escalate => {
            state.obs_state.num_escalations += 1;
            state.obs.publish(&state.obs_state);
            Err(format!(
                "child {} failed more than {} times within {:?}; escalating",
                child.spec.name, state.args_policy.max_restarts, state.args_policy.window
            )
            .into())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use testkit::wait_until;

    use super::*;

    /// A child that panics or errors on command.
    struct Faulty;
    enum FaultyMsg {
        Panic,
        Error,
    }

    impl Actor for Faulty {
        type Msg = FaultyMsg;
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<FaultyMsg>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
        async fn handle(
            &self,
            _: ActorRef<FaultyMsg>,
            msg: FaultyMsg,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                FaultyMsg::Panic => panic!("told to panic"),
                FaultyMsg::Error => Err("told to fail".into()),
            }
        }
    }

    type Current = Arc<parking_lot::Mutex<Option<ActorRef<FaultyMsg>>>>;

    fn faulty_spec(spawned: Arc<AtomicUsize>, current: Current) -> ChildSpec {
        ChildSpec::new("faulty", move |sup| {
            let (spawned, current) = (spawned.clone(), current.clone());
            async move {
                let (actor, _) = Actor::spawn_linked(None, Faulty, (), sup).await?;
                spawned.fetch_add(1, Ordering::SeqCst);
                *current.lock() = Some(actor.clone());
                Ok(actor.get_cell())
            }
        })
    }

    #[tokio::test]
    async fn restarts_a_child_after_panic_and_error_then_escalates() {
        let spawned = Arc::new(AtomicUsize::new(0));
        let current: Current = Arc::default();
        let policy = RestartPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            max_restarts: 2,
            window: Duration::from_secs(60),
        };
        let args = SupervisorArgs {
            kind: "test_supervisor",
            children: vec![faulty_spec(spawned.clone(), current.clone())],
            policy,
            obs: Arc::default(),
        };
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
        let args = SupervisorArgs {
            kind: "test_supervisor",
            children: vec![faulty_spec(spawned.clone(), current.clone())],
            policy: RestartPolicy::default(),
            obs: Arc::default(),
        };
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
}
