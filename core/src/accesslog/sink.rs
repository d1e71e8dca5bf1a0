//! Where access log lines go, and how they get there without a worker ever waiting on a disk
//! or a pipe.
//!
//! Each destination (a file path, stdout, stderr) has one [`Sink`] in the process, shared by
//! every listener and snapshot that logs there, with a writer thread of its own. A worker
//! appends its lines to a buffer of its own per sink ([`LogBufs`]) and hands the buffer to the
//! sink's thread when it holds `--file-flush-min-size-kb` (64 KiB) or when the worker's flush
//! timer fires (`--file-flush-interval-msec`, 10 s), as Envoy's access log files flush. Lines
//! are whole in every hand-over, so lines from several workers never interleave. The writer
//! thread ends when the last snapshot that logs to its sink is gone.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, Weak};

use crate::config::LogSink;
use crate::stats::FsStats;
use crate::Error;

/// Envoy's `--file-flush-interval-msec` default.
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 10_000;
/// Envoy's `--file-flush-min-size-kb` default, in bytes.
pub const DEFAULT_FLUSH_MIN_BYTES: u64 = 64 * 1024;

static FLUSH_INTERVAL_MS: AtomicU64 = AtomicU64::new(DEFAULT_FLUSH_INTERVAL_MS);
static FLUSH_MIN_BYTES: AtomicU64 = AtomicU64::new(DEFAULT_FLUSH_MIN_BYTES);

/// Sets how often workers hand their buffered lines over and how much they buffer before
/// they do, for the whole process (Envoy's command-line options).
pub fn set_flush(interval_ms: u64, min_bytes: u64) {
    FLUSH_INTERVAL_MS.store(interval_ms.max(1), Relaxed);
    FLUSH_MIN_BYTES.store(min_bytes, Relaxed);
}

/// The flush interval in ms.
pub fn flush_interval_ms() -> u64 {
    FLUSH_INTERVAL_MS.load(Relaxed)
}

fn flush_min_bytes() -> usize {
    FLUSH_MIN_BYTES.load(Relaxed) as usize
}

enum Msg {
    Lines(Vec<u8>),
    /// Close and open the file again (log rotation), then say so.
    Reopen(Sender<Result<(), String>>),
    /// Say so once everything sent before has been written.
    Flushed(Sender<()>),
}

/// The most bytes a destination may have waiting for its writer: past it (a pipe nobody
/// reads, a disk that stalls), lines are dropped and counted in `filesystem.write_failed`
/// rather than held without bound.
pub const MAX_QUEUED_BYTES: u64 = 16 * 1024 * 1024;

/// How long a reopen or a final flush waits for a writer before giving up on it (a writer
/// stuck on a destination nobody reads must not hang `/reopen_logs` or shutdown).
const WRITER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// One destination and its writer thread.
pub struct Sink {
    target: LogSink,
    tx: Mutex<Sender<Msg>>,
    /// Bytes handed over and not yet written.
    queued: Arc<AtomicU64>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Sink").field(&self.target).finish()
    }
}

fn registry() -> &'static Mutex<HashMap<LogSink, Weak<Sink>>> {
    static SINKS: std::sync::OnceLock<Mutex<HashMap<LogSink, Weak<Sink>>>> =
        std::sync::OnceLock::new();
    SINKS.get_or_init(Default::default)
}

fn open(path: &str) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

enum Out {
    File(String, Option<File>),
    /// A descriptor of the process's (1 or 2), written without the standard library's lock,
    /// which a writer blocked on a full pipe would otherwise hold from every other user.
    Fd(std::mem::ManuallyDrop<File>),
}

impl Out {
    fn write(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Out::File(_, Some(f)) => f.write_all(b),
            Out::File(_, None) => Err(std::io::ErrorKind::NotFound.into()),
            Out::Fd(f) => f.write_all(b),
        }
    }
}

fn fd(n: std::os::fd::RawFd) -> Out {
    use std::os::fd::FromRawFd;
    // Never closed (ManuallyDrop): the descriptor is the process's.
    Out::Fd(std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(n) }))
}

impl Sink {
    /// The process's sink for `target`, opening it (and starting its writer) if no snapshot
    /// holds it yet. A file that cannot be opened for appending is a config error, as in Envoy.
    pub fn get(target: &LogSink, path: &str) -> Result<Arc<Sink>, Error> {
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        reg.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = reg.get(target).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let out = match target {
            LogSink::File(p) => {
                let f = open(p).map_err(|e| {
                    Error::config(format!("{path}: cannot open access log file {p:?}: {e}"))
                })?;
                Out::File(p.clone(), Some(f))
            }
            LogSink::Stdout => fd(1),
            LogSink::Stderr => fd(2),
        };
        let (tx, rx) = channel::<Msg>();
        let queued = Arc::new(AtomicU64::new(0));
        let left = queued.clone();
        std::thread::Builder::new()
            .name("pyproxy-access-log".into())
            .spawn(move || {
                let mut out = out;
                // Ends when the last sender (the sink) is dropped.
                while let Ok(m) = rx.recv() {
                    match m {
                        Msg::Lines(b) => {
                            if out.write(&b).is_err() {
                                WRITE_FAILED.fetch_add(1, Relaxed);
                            } else {
                                WRITE_COMPLETED.fetch_add(1, Relaxed);
                            }
                            left.fetch_sub(b.len() as u64, Relaxed);
                        }
                        Msg::Reopen(done) => {
                            let r = match &mut out {
                                Out::File(p, f) => {
                                    *f = None;
                                    match open(p) {
                                        Ok(nf) => {
                                            *f = Some(nf);
                                            Ok(())
                                        }
                                        Err(e) => {
                                            REOPEN_FAILED.fetch_add(1, Relaxed);
                                            Err(format!("{p}: {e}"))
                                        }
                                    }
                                }
                                _ => Ok(()),
                            };
                            let _ = done.send(r);
                        }
                        Msg::Flushed(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .map_err(|e| {
                Error::config(format!("{path}: cannot start the access log writer: {e}"))
            })?;
        let s = Arc::new(Sink {
            target: target.clone(),
            tx: Mutex::new(tx),
            queued,
        });
        reg.insert(target.clone(), Arc::downgrade(&s));
        Ok(s)
    }

    fn send(&self, m: Msg) -> bool {
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(m)
            .is_ok()
    }

    /// Hands `lines` (whole lines) to the writer; drops them (counted as a failed write) when
    /// the writer is [`MAX_QUEUED_BYTES`] behind.
    fn write(&self, lines: Vec<u8>) {
        let n = lines.len() as u64;
        if self.queued.load(Relaxed) + n > MAX_QUEUED_BYTES {
            WRITE_FAILED.fetch_add(1, Relaxed);
            return;
        }
        self.queued.fetch_add(n, Relaxed);
        if !self.send(Msg::Lines(lines)) {
            self.queued.fetch_sub(n, Relaxed);
        }
    }
}

/// Writes that reached the destination, that failed, and reopens that failed, process-wide
/// (Envoy's `filesystem.write_completed`, `write_failed`, `reopen_failed`).
pub static WRITE_COMPLETED: AtomicU64 = AtomicU64::new(0);
pub static WRITE_FAILED: AtomicU64 = AtomicU64::new(0);
pub static REOPEN_FAILED: AtomicU64 = AtomicU64::new(0);

/// Every sink some snapshot still holds.
fn live_sinks() -> Vec<Arc<Sink>> {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter_map(Weak::upgrade)
        .collect()
}

/// Reopens every open access log file (after rotation: `POST /reopen_logs`), each after the
/// lines handed to it so far are written; the errors of those that could not be opened.
pub fn reopen_all() -> Vec<String> {
    let sinks = live_sinks();
    let mut errors = Vec::new();
    for s in sinks
        .iter()
        .filter(|s| matches!(s.target, LogSink::File(_)))
    {
        let (tx, rx) = channel();
        if s.send(Msg::Reopen(tx)) {
            match rx.recv_timeout(WRITER_WAIT) {
                Ok(Err(e)) => errors.push(e),
                Ok(Ok(())) => {}
                // It reopens once its writer gets to it.
                Err(_) => errors.push(format!(
                    "{:?}: its writer is blocked; it reopens when it catches up",
                    s.target
                )),
            }
        }
    }
    errors
}

/// Waits until every line handed to any sink so far is written.
pub fn wait_written() {
    let sinks = live_sinks();
    for s in sinks {
        let (tx, rx) = channel();
        if s.send(Msg::Flushed(tx)) {
            // A writer stuck on a destination nobody reads is not waited for.
            let _ = rx.recv_timeout(WRITER_WAIT);
        }
    }
}

/// A worker's buffered lines, per sink.
#[derive(Default)]
pub struct LogBufs {
    bufs: std::cell::RefCell<Vec<(Arc<Sink>, Vec<u8>)>>,
    stats: Arc<FsStats>,
}

impl LogBufs {
    /// Buffers counted in `stats`.
    pub fn new(stats: Arc<FsStats>) -> LogBufs {
        LogBufs {
            bufs: Default::default(),
            stats,
        }
    }

    /// Appends through `f` to the buffer for `sink`, handing it over once it is large enough.
    pub fn append(&self, sink: &Arc<Sink>, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bufs = self.bufs.borrow_mut();
        let i = match bufs.iter().position(|(s, _)| Arc::ptr_eq(s, sink)) {
            Some(i) => i,
            None => {
                bufs.push((sink.clone(), Vec::new()));
                bufs.len() - 1
            }
        };
        let buf = &mut bufs[i].1;
        let before = buf.len();
        f(buf);
        self.stats.write_buffered.inc();
        let g = &self.stats.write_total_buffered;
        if buf.len() >= flush_min_bytes() {
            g.add_sub(0, before as u64);
            let full = std::mem::take(buf);
            sink.write(full);
        } else {
            g.add_sub((buf.len() - before) as u64, 0);
        }
    }

    /// [`LogBufs::flush`], counted as the flush timer's when it handed anything over.
    pub fn flush_by_timer(&self) {
        if self.buffered() > 0 {
            self.stats.flushed_by_timer.inc();
        }
        self.flush();
    }

    /// Hands every buffered line over (the flush timer, a worker's end); sinks no longer
    /// written to are let go.
    pub fn flush(&self) {
        let mut bufs = self.bufs.borrow_mut();
        for (s, b) in bufs.iter_mut() {
            if !b.is_empty() {
                self.stats.write_total_buffered.add_sub(0, b.len() as u64);
                s.write(std::mem::take(b));
            }
        }
        // Every buffer is let go once empty: a worker holds a sink only while it has lines for
        // it, so a sink no snapshot names any more ends (its file closed, its writer gone).
        bufs.clear();
    }

    /// Bytes buffered.
    pub fn buffered(&self) -> usize {
        self.bufs.borrow().iter().map(|(_, b)| b.len()).sum()
    }
}

impl Drop for LogBufs {
    fn drop(&mut self) {
        self.flush();
    }
}
