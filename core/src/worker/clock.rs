//! The worker's clock, read once per turn of its event loop.
//!
//! A request used to read the clock four or five times (its start, the request written
//! upstream, the response head read, its end), about 28 ns each on a virtual machine's
//! clock source. nginx (`ngx_time_update` after each poll), HAProxy (`now` after each poll) and
//! Envoy (the dispatcher's approximate time) read it once per turn of the loop instead, and so
//! does a worker here: [`Turns`] stamps the time each time the runtime polls the worker's task
//! set, which is after every poll of epoll and at least every 61 tasks (tokio's `LocalSet`
//! tick), so a stamp is stale by at most one such batch of work (usually microseconds; more
//! when a config swap runs in the batch, or when the thread is descheduled or throttled
//! mid-batch). A stamp is never later than the real time, so a deadline taken from it can only
//! come early by that much, never late; whether one has passed is always decided on tokio's
//! own clock (`timer.rs`), so nothing spins on a stale stamp. Timeouts and stats count whole
//! milliseconds.
//!
//! Off a worker thread (unit tests, the control plane) [`now`] reads the clock.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

thread_local! {
    static NOW: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The time this turn of the worker's event loop began (a clock read off a worker thread).
#[inline]
pub(crate) fn now() -> Instant {
    NOW.with(Cell::get).unwrap_or_else(Instant::now)
}

/// [`now`] as tokio's instant, for deadlines (off a worker, tokio's own clock, which a test
/// may have paused).
#[inline]
pub(crate) fn tnow() -> tokio::time::Instant {
    NOW.with(Cell::get)
        .map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std)
}

/// Polls `F` (the worker's task set), stamping the time for the length of each poll.
pub(crate) struct Turns<F>(pub F);

impl<F: Future + Unpin> Future for Turns<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        NOW.with(|c| c.set(Some(Instant::now())));
        let r = Pin::new(&mut self.0).poll(cx);
        // Outside the batch (the runtime's own work) the stamp does not apply.
        NOW.with(|c| c.set(None));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_a_worker_now_reads_the_clock() {
        let a = now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(now() > a);
    }

    #[test]
    fn a_turn_holds_its_stamp_until_the_next() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let stamps = rt.block_on(Turns(Box::pin(local.run_until(async {
            let a = now();
            std::thread::sleep(std::time::Duration::from_millis(2));
            // Same turn: the same stamp, although time went on.
            let b = now();
            // A yield ends the turn; the next one is stamped anew.
            tokio::task::yield_now().await;
            let c = now();
            (a, b, c)
        }))));
        let (a, b, c) = stamps;
        assert_eq!(a, b);
        assert!(c >= a + std::time::Duration::from_millis(2));
        // The stamp holds only while the task set is polled.
        assert!(NOW.with(Cell::get).is_none());
    }
}
