//! One timer per downstream connection, shared by every wait of that connection: the idle wait
//! between requests, the head read and the exchange with the upstream.
//!
//! The deadlines themselves (connection idle, request headers, stream idle, route, request) are
//! plain `Instant`s kept by each wait; the timer only has to go off no later than the earliest
//! one that matters. It is armed lazily: a deadline later than the armed time changes nothing
//! (the timer goes off early, the wait finds nothing due and arms it again), so a connection
//! under steady traffic registers with tokio's timer wheel about once per timeout period
//! instead of three times per request (callgrind: timer registration and removal were ~6% of
//! the request path's instructions).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{sleep_until, Instant, Sleep};

/// Further than any deadline: "not armed".
fn far() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

pub(super) struct ConnTimer {
    sleep: Pin<Box<Sleep>>,
    /// When `sleep` goes off; `None` once it has (or before it was first armed).
    armed: Option<Instant>,
    /// Whether `sleep` holds the connection task's waker: polled to `Pending`, with the task's
    /// budget left so the poll did register, and neither reset nor gone off since. Until it
    /// goes off, polling it again would only register the same waker again (a `Sleep` poll is
    /// ~110 instructions, two per request: callgrind).
    holds_waker: bool,
}

impl ConnTimer {
    pub(super) fn new() -> ConnTimer {
        ConnTimer {
            sleep: Box::pin(sleep_until(far())),
            armed: None,
            holds_waker: false,
        }
    }

    /// Makes the timer go off no later than `at`. Free when it is already armed for `at` or
    /// earlier, the common case.
    #[inline]
    pub(super) fn arm_by(&mut self, at: Instant) {
        if self.armed.is_none_or(|a| at < a) {
            self.sleep.as_mut().reset(at);
            self.armed = Some(at);
            self.holds_waker = false;
        }
    }

    /// Polls for the timer going off. The timer belongs to one connection's task, so the
    /// waker an earlier poll left in it is the one to wake: while it is there, only whether
    /// the timer has gone off needs looking at.
    fn poll_sleep(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.holds_waker && !self.sleep.is_elapsed() {
            return Poll::Pending;
        }
        // Out of budget, the poll returns Pending without registering (tokio wakes the task
        // again itself).
        let registers = tokio::task::coop::has_budget_remaining();
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.armed = None;
                self.holds_waker = false;
                Poll::Ready(())
            }
            Poll::Pending => {
                self.holds_waker = registers;
                Poll::Pending
            }
        }
    }

    /// Polls for the timer going off. Only poll this after [`ConnTimer::arm_by`]: the wait
    /// then checks its own deadlines, which may not be due yet (an earlier wait armed the
    /// timer), and arms it again for them.
    pub(super) fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_sleep(cx)
    }

    /// [`ConnTimer::poll_fired`] as a future.
    #[cfg(test)]
    pub(super) async fn fired(&mut self) {
        poll_fn(|cx| self.poll_sleep(cx)).await
    }

    /// Waits until `deadline` has passed (forever for `None`), for a wait with that one
    /// deadline: goings-off for earlier waits' deadlines are absorbed here.
    pub(super) async fn until(&mut self, deadline: Option<Instant>) {
        poll_fn(|cx| self.poll_until(cx, deadline)).await
    }

    /// [`ConnTimer::until`] as a poll, for a wait polled by hand.
    pub(super) fn poll_until(
        &mut self,
        cx: &mut Context<'_>,
        deadline: Option<Instant>,
    ) -> Poll<()> {
        let Some(deadline) = deadline else {
            return Poll::Pending;
        };
        loop {
            self.arm_by(deadline);
            ready!(self.poll_sleep(cx));
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
        }
    }
}

/// The earliest of some optional deadlines.
#[inline]
pub(super) fn earliest<const N: usize>(deadlines: [Option<Instant>; N]) -> Option<Instant> {
    deadlines.into_iter().flatten().min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn goes_off_by_the_earliest_armed_deadline_and_rearms() {
        let mut t = ConnTimer::new();
        let t0 = Instant::now();
        t.arm_by(t0 + Duration::from_secs(10));
        // A later deadline does not postpone it; an earlier one brings it forward.
        t.arm_by(t0 + Duration::from_secs(20));
        t.arm_by(t0 + Duration::from_secs(5));
        t.fired().await;
        assert_eq!(Instant::now() - t0, Duration::from_secs(5));
        // Gone off: arming again works, for a later time too.
        t.arm_by(t0 + Duration::from_secs(20));
        t.fired().await;
        assert_eq!(Instant::now() - t0, Duration::from_secs(20));
        assert_eq!(
            earliest([None, Some(t0), Some(t0 + Duration::from_secs(1))]),
            Some(t0)
        );
        assert_eq!(earliest::<2>([None, None]), None);
    }

    #[tokio::test(start_paused = true)]
    async fn goes_off_when_polled_again_before_its_time() {
        // Woken every second by something else: the polls in between skip the Sleep (it
        // already holds the task's waker), and the timer still goes off on time.
        let mut t = ConnTimer::new();
        let t0 = Instant::now();
        t.arm_by(t0 + Duration::from_secs(10));
        let mut tick =
            tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
        let mut ticks = 0;
        loop {
            tokio::select! {
                biased;
                () = t.fired() => break,
                _ = tick.tick() => {
                    ticks += 1;
                    assert!(t.holds_waker);
                    assert!(ticks < 10, "the timer did not go off at 10 s");
                }
            }
        }
        assert_eq!(Instant::now() - t0, Duration::from_secs(10));
        assert_eq!(ticks, 9);
        assert!(!t.holds_waker && t.armed.is_none());
    }
}
