//! Keeping an actor alive through a panic in its own work.
//!
//! actix does not restart an actor that panicked: its context is dropped,
//! its mailbox closes, and everyone holding its address fails from then on
//! (actix #158, #204). A copier's reading loop runs under `catch_unwind`
//! and its actor restarts it; an actor that many copiers send to (a lane)
//! runs its handlers and timers through [`guarded`] and [`guard`] instead,
//! so that a panic becomes a call to [`Recover::recover`], which puts the
//! actor back in a state it can go on from, at the same address.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use actix::prelude::*;

/// An actor that can put itself right after a panic in its own work.
pub trait Recover: Actor {
    /// Called once for each panic caught, with its message, after the
    /// work that panicked was dropped.
    fn recover(&mut self, message: String, ctx: &mut Self::Context);
}

/// Runs `work` on the actor now; a panic in it calls [`Recover::recover`]
/// and gives `None`.
pub fn guarded<A, T>(
    act: &mut A,
    ctx: &mut A::Context,
    work: impl FnOnce(&mut A, &mut A::Context) -> T,
) -> Option<T>
where
    A: Recover,
{
    match catch_unwind(AssertUnwindSafe(|| work(&mut *act, &mut *ctx))) {
        Ok(value) => Some(value),
        Err(panic) => {
            act.recover(panic_message(panic.as_ref()), ctx);
            None
        }
    }
}

/// `work`, whose panics call [`Recover::recover`]; it then ends with `None`.
pub fn guard<A, F>(work: F) -> Guarded<F>
where
    A: Recover,
    F: ActorFuture<A>,
{
    Guarded {
        work: Some(Box::pin(work)),
    }
}

/// An actor future run by [`guard`].
pub struct Guarded<F> {
    /// `None` once it ended: a future that panicked is never polled again.
    work: Option<Pin<Box<F>>>,
}

impl<A, F> ActorFuture<A> for Guarded<F>
where
    A: Recover,
    F: ActorFuture<A>,
{
    type Output = Option<F::Output>;

    fn poll(
        mut self: Pin<&mut Self>,
        act: &mut A,
        ctx: &mut A::Context,
        task: &mut Context<'_>,
    ) -> Poll<Self::Output> {
        let Some(work) = self.work.as_mut() else {
            return Poll::Ready(None);
        };
        match catch_unwind(AssertUnwindSafe(|| {
            work.as_mut().poll(&mut *act, &mut *ctx, task)
        })) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => {
                self.work = None;
                Poll::Ready(Some(value))
            }
            Err(panic) => {
                self.work = None;
                act.recover(panic_message(panic.as_ref()), ctx);
                Poll::Ready(None)
            }
        }
    }
}

/// What a panic said, for logs and errors.
pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its work, and the panics it recovered from.
    #[derive(Default)]
    struct Counter {
        done: u32,
        recovered: Vec<String>,
    }

    impl Actor for Counter {
        type Context = actix::Context<Self>;
    }

    impl Recover for Counter {
        fn recover(&mut self, message: String, _: &mut Self::Context) {
            self.recovered.push(message);
        }
    }

    /// Work done at once, or `later` (after an await), panicking if `panics`.
    #[derive(Message)]
    #[rtype(result = "Option<u32>")]
    struct Work {
        later: bool,
        panics: bool,
    }

    impl Handler<Work> for Counter {
        type Result = ResponseActFuture<Self, Option<u32>>;

        fn handle(&mut self, msg: Work, ctx: &mut Self::Context) -> Self::Result {
            if !msg.later {
                let done = guarded(self, ctx, |act, _| {
                    assert!(!msg.panics, "panicked now");
                    act.done += 1;
                    act.done
                });
                return Box::pin(fut::ready(done));
            }
            let work = async move {
                tokio::task::yield_now().await;
                assert!(!msg.panics, "panicked later");
            }
            .into_actor(self)
            .map(|(), act, _| {
                act.done += 1;
                act.done
            });
            Box::pin(guard(work))
        }
    }

    #[derive(Message)]
    #[rtype(result = "Vec<String>")]
    struct Recovered;

    impl Handler<Recovered> for Counter {
        type Result = MessageResult<Recovered>;

        fn handle(&mut self, _: Recovered, _: &mut Self::Context) -> Self::Result {
            MessageResult(self.recovered.clone())
        }
    }

    #[actix_rt::test]
    async fn a_panic_in_guarded_work_calls_recover_and_the_actor_keeps_its_mailbox() {
        let counter = Counter::default().start();
        let send = |later, panics| counter.send(Work { later, panics });
        assert_eq!(send(false, false).await.ok(), Some(Some(1)));
        assert_eq!(send(false, true).await.ok(), Some(None), "now");
        assert_eq!(send(true, false).await.ok(), Some(Some(2)));
        assert_eq!(send(true, true).await.ok(), Some(None), "later");
        assert_eq!(send(false, false).await.ok(), Some(Some(3)));
        assert!(counter.connected(), "the actor is still running");
        assert_eq!(
            counter.send(Recovered).await.ok(),
            Some(vec![
                "panicked now".to_string(),
                "panicked later".to_string()
            ])
        );
    }
}
