-- Appended to every wrk script perf/run.py writes: prints one machine-readable line with the
-- figures wrk's own summary rounds or leaves out (p99.9, exact counts). wrk records latency in
-- microseconds.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'PERF {"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, "p50_us": %.0f, "p99_us": %.0f, ' ..
    '"p999_us": %.0f, "mean_us": %.1f, "max_us": %.0f, "err_connect": %.0f, "err_read": %.0f, ' ..
    '"err_write": %.0f, "err_status": %.0f, "err_timeout": %.0f}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
