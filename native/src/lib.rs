//! `pyproxy._native`: the pyo3 bindings. Type conversion, error mapping and GIL handling only;
//! every behaviour lives in `pyproxy-core`.

use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use pyproxy_core::{config::Snapshot, Engine as CoreEngine, Error, ErrorKind, Stop};

/// Maps a core error into the `pyproxy.errors` class for its kind.
fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let class = match e.kind() {
        ErrorKind::Config => "ConfigError",
        ErrorKind::Bind => "BindError",
        ErrorKind::Engine => "EngineError",
    };
    match py.import("pyproxy.errors").and_then(|m| m.getattr(class)) {
        Ok(cls) => match cls.call1((e.message().to_string(),)) {
            Ok(inst) => PyErr::from_value(inst),
            Err(err) => err,
        },
        Err(err) => err,
    }
}

fn parse(py: Python<'_>, snapshot: &[u8]) -> PyResult<Snapshot> {
    Snapshot::from_json(snapshot).map_err(|e| to_py(py, e))
}

/// Compiles a snapshot without binding anything; raises ConfigError.
#[pyfunction]
fn validate(py: Python<'_>, snapshot: &[u8]) -> PyResult<()> {
    let snap = parse(py, snapshot)?;
    py.allow_threads(|| pyproxy_core::snapshot::compile(&snap).map(|_| ()))
        .map_err(|e| to_py(py, e))
}

/// The data plane; see pyproxy/_native.pyi.
#[pyclass(frozen)]
struct Engine {
    inner: CoreEngine,
}

#[pymethods]
impl Engine {
    #[new]
    fn new(concurrency: usize) -> PyResult<Engine> {
        if concurrency == 0 {
            return Err(PyValueError::new_err("concurrency must be at least 1"));
        }
        Ok(Engine {
            inner: CoreEngine::new(concurrency),
        })
    }

    #[getter]
    fn concurrency(&self) -> usize {
        self.inner.concurrency()
    }

    fn start(&self, py: Python<'_>, snapshot: &[u8]) -> PyResult<()> {
        let snap = parse(py, snapshot)?;
        py.allow_threads(|| self.inner.start(&snap))
            .map_err(|e| to_py(py, e))
    }

    fn apply(&self, py: Python<'_>, snapshot: &[u8]) -> PyResult<()> {
        let snap = parse(py, snapshot)?;
        py.allow_threads(|| self.inner.apply(&snap))
            .map_err(|e| to_py(py, e))
    }

    fn listeners(&self) -> Vec<(String, String, u16)> {
        self.inner
            .listeners()
            .into_iter()
            .map(|(n, a)| (n, a.ip().to_string(), a.port()))
            .collect()
    }

    #[pyo3(signature = (shutdown = false, graceful = false, skip_exit = false))]
    fn drain_listeners(&self, py: Python<'_>, shutdown: bool, graceful: bool, skip_exit: bool) {
        let stop = if skip_exit {
            Stop::Never
        } else if graceful {
            Stop::AfterDrainTime
        } else {
            Stop::Now
        };
        py.allow_threads(|| self.inner.drain_listeners(shutdown, stop));
    }

    fn set_health_check_failed(&self, py: Python<'_>, failed: bool) {
        py.allow_threads(|| self.inner.set_health_check_failed(failed));
    }

    fn set_drain_time(&self, seconds: f64) -> PyResult<()> {
        if !(seconds >= 0.0 && seconds.is_finite()) {
            return Err(PyValueError::new_err(format!(
                "drain time {seconds}: must be a finite number of seconds, not negative"
            )));
        }
        // Longer than a Duration holds: it never ends.
        let t = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX);
        self.inner.set_drain_time(t);
        Ok(())
    }

    fn set_file_flush(&self, interval_ms: u64, min_bytes: u64) {
        self.inner
            .set_file_flush(Duration::from_millis(interval_ms), min_bytes);
    }

    fn reopen_logs(&self, py: Python<'_>) -> Vec<String> {
        py.allow_threads(|| self.inner.reopen_logs())
    }

    fn set_drain_strategy(&self, strategy: &str) -> PyResult<()> {
        let gradual = match strategy {
            "gradual" => true,
            "immediate" => false,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "drain strategy {strategy:?}: must be \"gradual\" or \"immediate\""
                )))
            }
        };
        self.inner.set_drain_gradual(gradual);
        Ok(())
    }

    fn active_connections(&self) -> u64 {
        self.inner.active_connections()
    }

    fn shutdown(&self, py: Python<'_>, timeout_s: f64) {
        let t = Duration::from_secs_f64(timeout_s.max(0.0));
        py.allow_threads(|| self.inner.shutdown(t));
    }

    #[pyo3(signature = (format = "text", filter = None, used_only = false))]
    fn stats(
        &self,
        py: Python<'_>,
        format: &str,
        filter: Option<&str>,
        used_only: bool,
    ) -> PyResult<String> {
        py.allow_threads(|| self.inner.render_stats(format, filter, used_only))
            .map_err(|e| to_py(py, e))
    }

    fn stat_values(&self, py: Python<'_>) -> std::collections::HashMap<String, u64> {
        py.allow_threads(|| self.inner.stat_values())
    }

    fn reset_counters(&self) {
        self.inner.reset_counters();
    }

    fn clusters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let info = py.allow_threads(|| self.inner.clusters());
        let out = PyList::empty(py);
        for c in info {
            let d = PyDict::new(py);
            d.set_item("name", c.name)?;
            let hosts = PyList::empty(py);
            for h in c.hosts {
                let hd = PyDict::new(py);
                let (ip, port) = match h.addr.parse::<std::net::SocketAddr>() {
                    Ok(a) => (a.ip().to_string(), a.port()),
                    Err(_) => (h.addr.clone(), 0),
                };
                hd.set_item("address", ip)?;
                hd.set_item("port", port)?;
                hd.set_item("weight", h.weight)?;
                hd.set_item("hostname", h.hostname)?;
                // The active health check's and outlier detection's flags
                // (pyproxy_core::upstream::health::flag: FAILED 1, OUTLIER 2).
                hd.set_item("healthy", h.health & 3 == 0)?;
                hd.set_item("health_flags", h.health)?;
                hd.set_item("success_rate", h.success_rate[0])?;
                hd.set_item("local_origin_success_rate", h.success_rate[1])?;
                for (k, v) in h.stats {
                    hd.set_item(k, v)?;
                }
                hosts.append(hd)?;
            }
            d.set_item("hosts", hosts)?;
            if let Some(o) = c.outlier {
                let od = PyDict::new(py);
                od.set_item("success_rate_average", o.average)?;
                od.set_item("success_rate_ejection_threshold", o.threshold)?;
                od.set_item("local_origin_success_rate_average", o.local_average)?;
                od.set_item(
                    "local_origin_success_rate_ejection_threshold",
                    o.local_threshold,
                )?;
                d.set_item("outlier", od)?;
            }
            out.append(d)?;
        }
        Ok(out)
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(validate, m)?)?;
    m.add_class::<Engine>()?;
    Ok(())
}
