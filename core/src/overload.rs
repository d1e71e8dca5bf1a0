//! Envoy's overload manager: resource monitors read off the workers, on a thread of their own
//! (`pyproxy-ovl`), every `refresh_interval`; each action's triggers turn the pressures into a
//! scale from 0 to 1, and the workers hear of a change as one command ([`OverloadNow`]), so a
//! request pays one `Cell` read for the whole feature. The global connection limit
//! (`global_downstream_max_connections`) is checked as each connection is accepted instead
//! ([`GlobalConnections`]), as Envoy's proactive resource is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::config::{ActionKind, MonitorKind, Overload, ScaledTimer, TimerMin};
use crate::stats::StatKind;
use crate::worker::{Cmd, Shared};

/// What the workers act on: each action's scale (0: off; 1: saturated; between: the share of
/// requests or connections it applies to, as Envoy draws it per request).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OverloadNow {
    /// `stop_accepting_requests`: 503 `envoy overloaded`.
    pub stop_requests: f32,
    /// `disable_http_keepalive`: `connection: close` on the response.
    pub keepalive_off: f32,
    /// `reject_incoming_connections`: accepted connections are closed at once.
    pub reject: f32,
    /// `stop_accepting_connections` is saturated: the listeners do not accept.
    pub stop_accepting: bool,
    /// `reduce_timeouts`: its scale, and the least durations of the timers it scales.
    pub timer_scale: f32,
    pub conn_idle: Option<TimerMin>,
    pub stream_idle: Option<TimerMin>,
}

impl OverloadNow {
    /// Whether `reduce_timeouts` scales an idle timer.
    #[inline]
    pub fn scales_timers(&self) -> bool {
        self.conn_idle.is_some() || self.stream_idle.is_some()
    }

    /// The connection idle timeout (ms) as `reduce_timeouts` has it now.
    #[inline]
    pub fn conn_idle_ms(&self, ms: u64) -> u64 {
        self.conn_idle
            .map_or(ms, |m| m.scaled(ms, self.timer_scale))
    }

    /// The stream idle timeout (ms) as `reduce_timeouts` has it now.
    #[inline]
    pub fn stream_idle_ms(&self, ms: u64) -> u64 {
        self.stream_idle
            .map_or(ms, |m| m.scaled(ms, self.timer_scale))
    }

    /// Whether an action of scale `p` applies to this request or connection.
    #[inline]
    pub fn draw(p: f32) -> bool {
        p >= 1.0 || (p > 0.0 && fastrand::f32() < p)
    }
}

/// `global_downstream_max_connections`: the limit (0: none) against the sum of the workers'
/// open client connections. Two workers accepting at the same moment may both pass at the
/// limit (Envoy's is one atomic counter).
#[derive(Default)]
pub struct GlobalConnections {
    max: AtomicU64,
    workers: OnceLock<Vec<Arc<Shared>>>,
    /// Connections refused: the monitor's `failed_updates`, as Envoy counts a refused
    /// allocation of its proactive resource.
    refused: AtomicU64,
}

impl GlobalConnections {
    /// Whether one more client connection may be opened (false: it is refused and counted).
    #[inline]
    pub fn admit(&self) -> bool {
        let max = self.max.load(Relaxed);
        if max == 0 {
            return true;
        }
        let open: u64 = self
            .workers
            .get()
            .map_or(0, |w| w.iter().map(|s| s.active()).sum());
        if open < max {
            return true;
        }
        self.refused.fetch_add(1, Relaxed);
        false
    }

    /// The workers whose connections count (set once they are started).
    pub fn set_workers(&self, workers: Vec<Arc<Shared>>) {
        let _ = self.workers.set(workers);
    }
}

/// A monitor's stats (`overload.<name>.*`).
#[derive(Debug, Default, Clone)]
struct MonitorStats {
    /// The last pressure read (0 to 1); none yet: its triggers stay off.
    pressure: Option<f64>,
    failed_updates: u64,
    skipped_updates: u64,
}

/// An action's stats (`overload.<name>.*`).
#[derive(Debug, Default, Clone)]
struct ActionStats {
    scale: f64,
    shrink_count: u64,
}

struct State {
    cfg: Option<Arc<Overload>>,
    workers: Vec<UnboundedSender<Cmd>>,
    stop: bool,
    /// The workers changed: tell them the actions again.
    resend: bool,
    /// Bumped on each change of `cfg`, so a wait ends and the monitors are read at once.
    generation: u64,
    monitors: HashMap<String, MonitorStats>,
    actions: HashMap<String, ActionStats>,
}

struct Inner {
    state: Mutex<State>,
    changed: Condvar,
    global: Arc<GlobalConnections>,
}

/// The overload manager's thread and what it shares with the engine.
pub struct Manager {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

/// How often `shrink_heap` gives memory back while it is active (Envoy's period).
const SHRINK_EVERY: Duration = Duration::from_secs(10);

impl Manager {
    /// Starts the thread; it reads nothing until a configuration with an overload manager
    /// is given ([`Manager::configure`]).
    pub fn spawn(global: Arc<GlobalConnections>) -> std::io::Result<Manager> {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                cfg: None,
                workers: Vec::new(),
                stop: false,
                resend: false,
                generation: 0,
                monitors: HashMap::new(),
                actions: HashMap::new(),
            }),
            changed: Condvar::new(),
            global,
        });
        let me = inner.clone();
        let thread = std::thread::Builder::new()
            .name("pyproxy-ovl".into())
            .spawn(move || run(&me))?;
        Ok(Manager {
            inner,
            thread: Some(thread),
        })
    }

    /// The workers to tell of changes.
    pub fn set_workers(&self, workers: Vec<UnboundedSender<Cmd>>) {
        let mut st = self.lock();
        st.workers = workers;
        st.resend = true;
        st.generation += 1;
        drop(st);
        self.inner.changed.notify_all();
    }

    /// Takes a snapshot's overload manager (none: every action off). Stats of monitors and
    /// actions that keep their names carry on.
    pub fn configure(&self, cfg: Option<&Overload>) {
        let max = cfg
            .into_iter()
            .flat_map(|c| &c.monitors)
            .find_map(|m| match m.kind {
                MonitorKind::GlobalDownstreamMaxConnections {
                    max_active_downstream_connections,
                } => Some(max_active_downstream_connections),
                _ => None,
            })
            .unwrap_or(0);
        self.inner.global.max.store(max, Relaxed);
        let mut st = self.lock();
        if st.cfg.as_deref() == cfg {
            return;
        }
        st.cfg = cfg.map(|c| Arc::new(c.clone()));
        st.monitors
            .retain(|name, _| cfg.is_some_and(|c| c.monitors.iter().any(|m| &m.name == name)));
        st.actions
            .retain(|name, _| cfg.is_some_and(|c| c.actions.iter().any(|a| &a.name == name)));
        st.generation += 1;
        drop(st);
        self.inner.changed.notify_all();
    }

    /// The `overload.*` stats of the configured monitors and actions.
    pub fn stats(&self) -> Vec<(String, StatKind, u64)> {
        let st = self.lock();
        let Some(cfg) = st.cfg.clone() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for m in &cfg.monitors {
            let s = st.monitors.get(&m.name).cloned().unwrap_or_default();
            let p = format!("overload.{}.", m.name);
            let global = matches!(m.kind, MonitorKind::GlobalDownstreamMaxConnections { .. });
            let failed = if global {
                self.inner.global.refused.load(Relaxed)
            } else {
                s.failed_updates
            };
            out.push((format!("{p}failed_updates"), StatKind::Counter, failed));
            out.push((
                format!("{p}pressure"),
                StatKind::Gauge,
                percent(s.pressure.unwrap_or(0.0)),
            ));
            if !global {
                out.push((
                    format!("{p}skipped_updates"),
                    StatKind::Counter,
                    s.skipped_updates,
                ));
            }
        }
        for a in &cfg.actions {
            let s = st.actions.get(&a.name).cloned().unwrap_or_default();
            let p = format!("overload.{}.", a.name);
            out.push((
                format!("{p}active"),
                StatKind::Gauge,
                u64::from(s.scale >= 1.0),
            ));
            out.push((
                format!("{p}scale_percent"),
                StatKind::Gauge,
                percent(s.scale),
            ));
            if a.kind == ActionKind::ShrinkHeap {
                out.push((
                    format!("{p}shrink_count"),
                    StatKind::Counter,
                    s.shrink_count,
                ));
            }
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.lock().stop = true;
        self.inner.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A fraction as Envoy's gauges show it: whole percent, rounded down.
fn percent(x: f64) -> u64 {
    (x.clamp(0.0, 1.0) * 100.0) as u64
}

/// A monitor's pressure now (none: a monitor that is not read, the global connection limit,
/// checked at each accept instead), or `Err` when it cannot be read.
fn read(kind: &MonitorKind) -> Result<Option<f64>, ()> {
    match kind {
        MonitorKind::FixedHeap {
            max_heap_size_bytes,
        } => Ok(Some(
            crate::engine::memory().0 as f64 / *max_heap_size_bytes as f64,
        )),
        MonitorKind::InjectedResource { filename } => read_pressure_file(filename).map(Some),
        MonitorKind::GlobalDownstreamMaxConnections { .. } => Ok(None),
    }
}

/// The number in a pressure file: a regular file (a FIFO or a device would block or never
/// end), of which the first 64 bytes are read.
fn read_pressure_file(path: &str) -> Result<f64, ()> {
    use std::io::Read;
    if !std::fs::metadata(path).map_err(|_| ())?.is_file() {
        return Err(());
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(|_| ())?
        .take(64)
        .read_to_string(&mut text)
        .map_err(|_| ())?;
    let v: f64 = text.trim().parse().map_err(|_| ())?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(())
    }
}

fn run(inner: &Inner) {
    let mut sent = OverloadNow::default();
    let mut next_shrink: Option<Instant> = None;
    let mut st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if st.stop {
            return;
        }
        let Some(cfg) = st.cfg.clone() else {
            // No overload manager: every action off.
            if sent != OverloadNow::default() || std::mem::take(&mut st.resend) {
                sent = OverloadNow::default();
                for w in &st.workers {
                    let _ = w.send(Cmd::Overload(sent));
                }
            }
            st = inner.changed.wait(st).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        // Read the monitors unlocked (a file read may be slow); a configuration given
        // meanwhile is taken at once instead.
        let generation = st.generation;
        drop(st);
        let readings: Vec<(String, Result<Option<f64>, ()>)> = cfg
            .monitors
            .iter()
            .map(|m| (m.name.clone(), read(&m.kind)))
            .collect();
        st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.generation != generation {
            continue;
        }
        for (name, r) in readings {
            let s = st.monitors.entry(name).or_default();
            match r {
                Ok(Some(p)) => s.pressure = Some(p),
                Ok(None) => {}
                // A monitor that cannot be read keeps its last pressure (Envoy's).
                Err(()) => s.failed_updates += 1,
            }
        }
        let mut now = OverloadNow::default();
        let mut shrink = false;
        for a in &cfg.actions {
            let scale = a
                .triggers
                .iter()
                // A monitor with no reading yet leaves its trigger off.
                .map(|t| {
                    st.monitors
                        .get(&t.monitor)
                        .and_then(|m| m.pressure)
                        .map_or(0.0, |p| t.kind.scale(p))
                })
                .fold(0.0, f64::max);
            st.actions.entry(a.name.clone()).or_default().scale = scale;
            match a.kind {
                ActionKind::StopAcceptingRequests => now.stop_requests = scale as f32,
                ActionKind::DisableHttpKeepalive => now.keepalive_off = scale as f32,
                ActionKind::RejectIncomingConnections => now.reject = scale as f32,
                ActionKind::StopAcceptingConnections => now.stop_accepting = scale >= 1.0,
                ActionKind::ShrinkHeap => shrink = scale >= 1.0,
                ActionKind::ReduceTimeouts => {
                    now.timer_scale = scale as f32;
                    for f in &a.timer_scale_factors {
                        match f.timer {
                            ScaledTimer::HttpDownstreamConnectionIdle => {
                                now.conn_idle = Some(f.min)
                            }
                            ScaledTimer::HttpDownstreamStreamIdle => now.stream_idle = Some(f.min),
                        }
                    }
                }
            }
        }
        if now != sent || std::mem::take(&mut st.resend) {
            sent = now;
            for w in &st.workers {
                let _ = w.send(Cmd::Overload(sent));
            }
        }
        if shrink {
            // Envoy looks every 10 s: the first release comes 10 s after the action began.
            let t = Instant::now();
            let at = *next_shrink.get_or_insert(t + SHRINK_EVERY);
            if t >= at {
                next_shrink = Some(t + SHRINK_EVERY);
                release_free_memory();
                if let Some(a) = cfg
                    .actions
                    .iter()
                    .find(|a| a.kind == ActionKind::ShrinkHeap)
                {
                    st.actions.entry(a.name.clone()).or_default().shrink_count += 1;
                }
            }
        } else {
            next_shrink = None;
        }
        // Until the next refresh, or a new configuration.
        let every = Duration::from_millis(cfg.refresh_interval_ms.max(1));
        let until = Instant::now() + every;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || st.stop || st.generation != generation {
                break;
            }
            st = inner
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Gives the allocator's free memory back to the system (`shrink_heap`; Envoy asks tcmalloc).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use crate::config::TriggerKind;

    #[test]
    fn triggers_scale_as_envoys() {
        let t = TriggerKind::Threshold { value: 0.95 };
        assert_eq!(t.scale(0.94), 0.0);
        assert_eq!(t.scale(0.95), 1.0);
        let s = TriggerKind::Scaled {
            scaling_threshold: 0.6,
            saturation_threshold: 0.9,
        };
        assert_eq!(s.scale(0.6), 0.0);
        assert!((s.scale(0.75) - 0.5).abs() < 1e-9);
        assert_eq!(s.scale(0.9), 1.0);
        assert_eq!(s.scale(1.0), 1.0);
    }

    #[test]
    fn scaled_timers_run_from_their_least_to_their_own() {
        use crate::config::TimerMin;
        let m = TimerMin::MinTimeoutMs(500);
        assert_eq!(m.scaled(4000, 0.0), 4000);
        assert_eq!(m.scaled(4000, 0.5), 2250);
        assert_eq!(m.scaled(4000, 1.0), 500);
        // A least duration above the timer's own is the timer's own.
        assert_eq!(TimerMin::MinTimeoutMs(9000).scaled(4000, 1.0), 4000);
        assert_eq!(TimerMin::MinScale(0.1).scaled(3000, 1.0), 300);
        assert_eq!(TimerMin::MinScale(0.1).scaled(0, 1.0), 0);
        // Saturated with no least duration: at once, never "no timeout" (0).
        assert_eq!(TimerMin::MinTimeoutMs(0).scaled(3000, 1.0), 1);
        assert_eq!(TimerMin::MinScale(0.0).scaled(3000, 0.99999), 1);
    }

    #[test]
    fn percents_round_down() {
        assert_eq!(super::percent(0.999), 99);
        assert_eq!(super::percent(0.75), 75);
        assert_eq!(super::percent(1.0), 100);
    }
}
