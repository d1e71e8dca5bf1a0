//! Workers: one thread, one current-thread tokio runtime and one SO_REUSEPORT socket per
//! listener each. A worker's state is thread-local (`Rc`, `Cell`); the engine talks to it only
//! through its command channel, and reads its stats through the shared stat stores.

mod clock;
pub mod conn;
mod ctx;
mod forward;
pub(crate) mod headers;
mod slots;
mod timer;

use std::sync::atomic::{
    AtomicU64, AtomicU8,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

pub use ctx::{Ctx, ListenerRt, WorkerSnap};

use crate::snapshot::{Compiled, HostAddr};
use crate::stats::Store;

/// The stat stores every worker registers its scopes in.
#[derive(Default)]
pub struct Stores {
    /// Stats shown by `/stats`.
    pub stats: Store,
    /// Per-host stats for `/clusters`, prefixed `<cluster>\0<address>\0`.
    pub hosts: Store,
}

/// What the engine tells a worker.
pub enum Cmd {
    /// Switch to a new snapshot: start accepting on `add`, stop accepting on `remove`.
    Apply {
        compiled: Arc<Compiled>,
        /// (listener name, socket, stat address like `127.0.0.1_10000`).
        add: Vec<(Arc<str>, std::net::TcpListener, String)>,
        remove: Vec<Arc<str>>,
    },
    /// New host list for a STRICT_DNS cluster, as resolved for one compiled cluster (`id`, its
    /// address): a worker that has since taken a snapshot with that cluster changed ignores it.
    Hosts {
        cluster: String,
        id: usize,
        hosts: Arc<Vec<HostAddr>>,
    },
    /// A health check changed which hosts of its cluster are healthy: the check's state, by
    /// its address (a state since dropped and its address reused only rebuilds a balancer
    /// from current findings, which changes nothing).
    Health { state: usize },
    /// Outlier detection ejected the host at `addr` of the cluster whose outlier state is at
    /// `state`: its pools close their connections (idle ones now, busy ones once done), as
    /// Envoy drains an ejected host's pools.
    DrainHost {
        state: usize,
        addr: std::net::SocketAddr,
    },
    /// Stop accepting and close idle connections, `after` this long (a graceful drain keeps
    /// accepting for the drain time first).
    Drain { after: Duration },
    /// Drain, wait for connections until `deadline`, then stop.
    Shutdown { deadline: Instant },
    /// The overload manager's actions changed.
    Overload(crate::overload::OverloadNow),
}

/// Counters the engine reads from a worker directly (single writer: the worker).
#[derive(Default)]
pub struct Shared {
    /// Open downstream connections.
    pub active_connections: AtomicU64,
}

impl Shared {
    /// Open downstream connections.
    pub fn active(&self) -> u64 {
        self.active_connections.load(Relaxed)
    }
}

/// The engine-wide drain state every worker reads at each response head
/// ([`Ctx::drain_close`]): set by the engine, so a response written after the call that set it
/// sees it on every worker (the worker's own drain, which stops accepting and closes idle
/// connections, follows by command). Also the drain time and strategy.
pub struct DrainState {
    flags: AtomicU8,
    /// `--drain-time-s` in milliseconds.
    drain_time_ms: AtomicU64,
    /// When the server's drain began, in milliseconds after `epoch` (the gradual strategy's
    /// clock starts there).
    started_ms: AtomicU64,
    epoch: Instant,
}

impl Default for DrainState {
    fn default() -> Self {
        DrainState {
            flags: AtomicU8::new(0),
            drain_time_ms: AtomicU64::new(0),
            started_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl DrainState {
    /// The server drains (`/drain_listeners`, shutdown).
    pub const DRAINING: u8 = 1;
    /// Health checks fail (`/healthcheck/fail`).
    pub const HEALTH_CHECK_FAILED: u8 = 2;
    /// `--drain-strategy gradual` (Envoy's default): while a drain lasts, a response closes its
    /// connection with a chance that grows from 0 to 1 over the drain time.
    pub const GRADUAL: u8 = 4;
    /// The drain is the one before the process exits: every response closes its connection,
    /// whatever the strategy.
    pub const SHUTDOWN: u8 = 8;

    /// Sets or clears `flag`.
    pub fn set(&self, flag: u8, on: bool) {
        if on {
            self.flags.fetch_or(flag, Release);
        } else {
            self.flags.fetch_and(!flag, Release);
        }
    }

    /// Starts the server's drain (once; a later call can only make it the shutdown's).
    pub fn start_drain(&self, shutdown: bool) {
        if !self.has(Self::DRAINING) {
            let since = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.started_ms.store(since, Relaxed);
        }
        // Release: a worker that sees the flag sees the start time.
        let shutdown = if shutdown { Self::SHUTDOWN } else { 0 };
        self.set(Self::DRAINING | shutdown, true);
    }

    /// Whether `flag` is set.
    pub fn has(&self, flag: u8) -> bool {
        self.get() & flag != 0
    }

    /// Every flag set.
    #[inline]
    pub fn get(&self) -> u8 {
        self.flags.load(Acquire)
    }

    /// When the server's drain began.
    pub fn started(&self) -> Instant {
        self.epoch + Duration::from_millis(self.started_ms.load(Relaxed))
    }

    /// A state for the next run: health checks failing, the strategy and the drain time as
    /// here, not draining.
    pub fn next_run(&self) -> DrainState {
        let d = DrainState::default();
        d.flags.store(
            self.get() & (Self::HEALTH_CHECK_FAILED | Self::GRADUAL),
            Relaxed,
        );
        d.drain_time_ms
            .store(self.drain_time_ms.load(Relaxed), Relaxed);
        d
    }

    /// Sets the drain time (`--drain-time-s`).
    pub fn set_drain_time(&self, t: Duration) {
        self.drain_time_ms
            .store(u64::try_from(t.as_millis()).unwrap_or(u64::MAX), Relaxed);
    }

    /// The drain time.
    pub fn drain_time(&self) -> Duration {
        Duration::from_millis(self.drain_time_ms.load(Relaxed))
    }

    /// Whether a response closes its connection `elapsed` into a drain, under the gradual
    /// strategy: always once the drain time is over (or if it is 0), before that with the
    /// chance elapsed / drain time, as Envoy's drain manager decides (in milliseconds where
    /// Envoy counts whole seconds).
    pub fn gradual_close(&self, elapsed: Duration) -> bool {
        let total = self.drain_time_ms.load(Relaxed);
        let elapsed = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        elapsed >= total || fastrand::u64(0..total) < elapsed
    }
}

/// The engine's handle on a running worker.
pub struct Worker {
    tx: mpsc::UnboundedSender<Cmd>,
    thread: Option<JoinHandle<()>>,
    /// State the worker publishes.
    pub shared: Arc<Shared>,
}

impl Worker {
    /// Starts worker `id` on its own thread, serving `compiled` on `listeners`;
    /// `drain` is the engine's (see [`Ctx::drain_close`]).
    pub fn spawn(
        id: usize,
        stores: Arc<Stores>,
        compiled: Arc<Compiled>,
        listeners: Vec<(Arc<str>, std::net::TcpListener, String)>,
        drain: Arc<DrainState>,
        global: Arc<crate::overload::GlobalConnections>,
    ) -> std::io::Result<Worker> {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        // The worker says when it has taken the snapshot (its stats, hosts and listeners
        // exist), so that the engine's start returns only then: a `/stats` or `/clusters`
        // right after start finds every worker's.
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name(format!("pyproxy-worker-{id}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("pyproxy: worker {id} could not start its event loop: {e}");
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                // The clock is read once per turn of the loop (clock.rs).
                let tasks = local.run_until(run(
                    id, stores, sh, drain, global, compiled, listeners, rx, ready_tx,
                ));
                rt.block_on(clock::Turns(Box::pin(tasks)));
            })?;
        // A worker that could not start drops its sender: no wait then.
        let _ = ready_rx.recv_timeout(std::time::Duration::from_secs(10));
        Ok(Worker {
            tx,
            thread: Some(thread),
            shared,
        })
    }

    /// Sends a command; false if the worker has stopped.
    pub fn send(&self, cmd: Cmd) -> bool {
        self.tx.send(cmd).is_ok()
    }

    /// A sender for commands (the DNS thread keeps one).
    pub fn sender(&self) -> mpsc::UnboundedSender<Cmd> {
        self.tx.clone()
    }

    /// Waits for the worker thread to end.
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    id: usize,
    stores: Arc<Stores>,
    shared: Arc<Shared>,
    drain: Arc<DrainState>,
    global: Arc<crate::overload::GlobalConnections>,
    compiled: Arc<Compiled>,
    listeners: Vec<(Arc<str>, std::net::TcpListener, String)>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    ready: std::sync::mpsc::SyncSender<()>,
) {
    let ctx = Ctx::new(id, stores, shared, drain, global, compiled);
    ctx.apply(ctx.current().compiled.clone(), listeners, Vec::new());
    let _ = ready.send(());
    tokio::task::spawn_local(ctx::housekeeping(ctx.clone()));
    tokio::task::spawn_local(ctx::flush_logs(ctx.clone()));
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Apply {
                compiled,
                add,
                remove,
            } => ctx.apply(compiled, add, remove),
            Cmd::Hosts { cluster, id, hosts } => ctx.set_hosts(&cluster, id, &hosts),
            Cmd::Health { state } => ctx.set_health(state),
            Cmd::DrainHost { state, addr } => ctx.drain_host(state, addr),
            Cmd::Overload(now) => ctx.set_overload(now),
            Cmd::Drain { after } if after.is_zero() => ctx.drain(),
            Cmd::Drain { after } => {
                let ctx = ctx.clone();
                tokio::task::spawn_local(async move {
                    tokio::time::sleep(after).await;
                    ctx.drain();
                });
            }
            Cmd::Shutdown { deadline } => {
                ctx.drain();
                while ctx.shared.active() > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                break;
            }
        }
    }
    ctx.close_pools();
    ctx.log_bufs.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradual_close_grows_from_never_to_always_over_the_drain_time() {
        let d = DrainState::default();
        d.set_drain_time(Duration::from_secs(10));
        let share = |elapsed_ms: u64| {
            let n = 20_000;
            let closed = (0..n)
                .filter(|_| d.gradual_close(Duration::from_millis(elapsed_ms)))
                .count();
            closed as f64 / n as f64
        };
        assert_eq!(share(0), 0.0);
        assert!((share(2_500) - 0.25).abs() < 0.03, "{}", share(2_500));
        assert!((share(7_500) - 0.75).abs() < 0.03, "{}", share(7_500));
        assert_eq!(share(10_000), 1.0);
        assert_eq!(share(60_000), 1.0);
        // No drain time: every response closes at once.
        d.set_drain_time(Duration::ZERO);
        assert_eq!(share(0), 1.0);
    }

    #[test]
    fn the_next_run_keeps_health_checks_strategy_and_time_but_does_not_drain() {
        let d = DrainState::default();
        d.set_drain_time(Duration::from_secs(3));
        d.set(DrainState::HEALTH_CHECK_FAILED | DrainState::GRADUAL, true);
        d.start_drain(true);
        let n = d.next_run();
        assert_eq!(
            n.get(),
            DrainState::HEALTH_CHECK_FAILED | DrainState::GRADUAL
        );
        assert_eq!(n.drain_time(), Duration::from_secs(3));
    }
}
