//! Runs the engine alone, without Python, on a snapshot JSON file: for profiling the request
//! path (`valgrind --tool=callgrind`, `perf`) with nothing else in the process.
//!
//!     cargo build --profile profiling --example serve -p pyproxy-core
//!     target/profiling/examples/serve snapshot.json [workers]
//!
//! Prints each listener's bound address, serves until stdin closes, then shuts down.

use std::io::Read;
use std::time::Duration;

use pyproxy_core::config::Snapshot;
use pyproxy_core::Engine;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: serve SNAPSHOT.json [WORKERS]");
        std::process::exit(2);
    };
    let workers = args.next().and_then(|w| w.parse().ok()).unwrap_or(1);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(1)
    });
    let snap = Snapshot::from_json(&bytes).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(1)
    });
    let engine = Engine::new(workers);
    if let Err(e) = engine.start(&snap) {
        eprintln!("{e}");
        std::process::exit(1);
    }
    for (name, addr) in engine.listeners() {
        println!("listener {name} on {addr}");
    }
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    engine.shutdown(Duration::from_secs(1));
}
