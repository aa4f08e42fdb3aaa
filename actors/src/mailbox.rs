//! Mailbox accounting for the console. ractor does not expose queue lengths, so every message
//! streamrec sends goes through [`tell`], [`ask`] or the timers here, which count it against the
//! receiving actor, and every actor counts what it handles (`Obs::handled`). The difference is
//! the mailbox depth; the handled count over time is the message rate.
//!
//! Counters exist from the actor's registration (first thing in `pre_start`, before anyone can
//! hold its reference) to its deregistration, so the two counts always describe the same
//! messages. Actor ids are unique within the process, so one table serves every node in it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use ractor::rpc::CallResult;
use ractor::{ActorCell, ActorId, ActorRef, Message, MessagingErr, RpcReplyPort};
use tokio::task::JoinHandle;

/// One actor's message counts.
pub struct Counters {
    enqueued: AtomicU64,
    handled: AtomicU64,
    /// The last rate sample: when, and the handled count then; and the rate it gave.
    sample: Mutex<(Instant, u64, f64)>,
}

/// What the console shows of a mailbox.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MailboxStats {
    /// Messages sent and not yet handled.
    pub depth: u64,
    /// Messages handled since the actor started.
    pub handled: u64,
    /// Messages handled per second, over the last second or more.
    pub rate: f64,
}

/// Shortest interval a rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(1);

impl Counters {
    fn new() -> Self {
        Self {
            enqueued: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            sample: Mutex::new((Instant::now(), 0, 0.0)),
        }
    }

    /// Counts one handled message.
    pub fn handled(&self) {
        self.handled.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> MailboxStats {
        let handled = self.handled.load(Ordering::Relaxed);
        let enqueued = self.enqueued.load(Ordering::Relaxed);
        let mut sample = self.sample.lock();
        let elapsed = sample.0.elapsed();
        if elapsed >= RATE_WINDOW {
            let rate = (handled - sample.1) as f64 / elapsed.as_secs_f64();
            *sample = (Instant::now(), handled, rate);
        }
        MailboxStats {
            depth: enqueued.saturating_sub(handled),
            handled,
            rate: sample.2,
        }
    }
}

static TABLE: LazyLock<RwLock<HashMap<ActorId, Arc<Counters>>>> = LazyLock::new(Default::default);

/// Starts counting for an actor (called by `Observed::register`).
pub(crate) fn attach(actor: &ActorCell) -> Arc<Counters> {
    let counters = Arc::new(Counters::new());
    TABLE.write().insert(actor.get_id(), counters.clone());
    counters
}

/// Stops counting for an actor that stopped.
pub(crate) fn detach(actor: &ActorCell) {
    TABLE.write().remove(&actor.get_id());
}

/// The mailbox of a live, registered actor.
pub fn stats(actor: &ActorCell) -> Option<MailboxStats> {
    TABLE.read().get(&actor.get_id()).map(|c| c.stats())
}

fn counters(actor: &ActorCell) -> Option<Arc<Counters>> {
    TABLE.read().get(&actor.get_id()).cloned()
}

/// Sends a message, counting it in the receiver's mailbox.
pub fn tell<M: Message>(actor: &ActorRef<M>, message: M) -> Result<(), MessagingErr<M>> {
    let counters = counters(actor);
    if let Some(c) = &counters {
        c.enqueued.fetch_add(1, Ordering::Relaxed);
    }
    actor.cast(message).inspect_err(|_| {
        if let Some(c) = &counters {
            c.enqueued.fetch_sub(1, Ordering::Relaxed);
        }
    })
}

/// Sends a request and waits for its reply, counting it in the receiver's mailbox.
pub async fn ask<M: Message, T: Send + 'static>(
    actor: &ActorRef<M>,
    build: impl FnOnce(RpcReplyPort<T>) -> M,
    timeout: Option<Duration>,
) -> Result<CallResult<T>, MessagingErr<M>> {
    let counters = counters(actor);
    if let Some(c) = &counters {
        c.enqueued.fetch_add(1, Ordering::Relaxed);
    }
    let result = actor.call(build, timeout).await;
    if result.is_err()
        && let Some(c) = &counters
    {
        c.enqueued.fetch_sub(1, Ordering::Relaxed);
    }
    result
}

/// Sends `message()` to `actor` after `delay`.
pub fn tell_after<M: Message>(
    actor: ActorRef<M>,
    delay: Duration,
    message: impl FnOnce() -> M + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = tell(&actor, message());
    })
}

/// Sends `message()` to `actor` every `period`, until the actor stops.
pub fn tell_every<M: Message>(
    actor: ActorRef<M>,
    period: Duration,
    message: impl Fn() -> M + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if tell(&actor, message()).is_err() {
                break;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::{Actor, ActorProcessingErr};
    use tokio::sync::oneshot;

    /// Counts what it handles; a message may hold the mailbox until the test releases it.
    struct Slow;

    struct Hold {
        started: oneshot::Sender<()>,
        release: Option<oneshot::Receiver<()>>,
    }

    impl Actor for Slow {
        type Msg = Hold;
        type State = Arc<Counters>;
        type Arguments = ();

        async fn pre_start(
            &self,
            myself: ActorRef<Self::Msg>,
            _: (),
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(attach(&myself))
        }

        async fn handle(
            &self,
            _: ActorRef<Self::Msg>,
            hold: Self::Msg,
            counters: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            counters.handled();
            let _ = hold.started.send(());
            if let Some(release) = hold.release {
                let _ = release.await;
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn depth_is_sent_minus_handled() {
        let (actor, handle) = Actor::spawn(None, Slow, ()).await.expect("spawn");
        let (release, held) = oneshot::channel();
        let mut held = Some(held);
        let mut first = None;
        for i in 0..5 {
            let (started, rx) = oneshot::channel();
            let release = held.take();
            tell(&actor, Hold { started, release }).expect("send");
            if i == 0 {
                first = Some(rx);
            }
        }
        first.expect("first").await.expect("first handled");
        let busy = stats(&actor).expect("registered");
        assert_eq!(busy.handled, 1);
        assert_eq!(busy.depth, 4);
        release.send(()).expect("the first message is held");
        assert!(
            testkit::wait_until(
                async || stats(&actor).expect("registered").depth == 0,
                Duration::from_secs(5)
            )
            .await,
            "the mailbox never drained"
        );
        assert_eq!(stats(&actor).expect("live").handled, 5);
        detach(&actor);
        assert!(stats(&actor).is_none());
        actor.stop(None);
        handle.await.expect("stopped");
    }
}
