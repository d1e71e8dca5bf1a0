"""Envoy wire-survey harness: generates the bootstrap, starts upstream + Envoy,
and offers raw-socket helpers.  Import it from the test scripts."""
import os
import socket
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import upstream  # noqa: E402

SCRATCH = "/tmp/survey"

LISTENERS = {
    "default": "",
    "ura": "use_remote_address: true",
    "hops": "use_remote_address: true\n          xff_num_trusted_hops: 1",
    "skip": "use_remote_address: true\n          skip_xff_append: true",
    "skipnoura": "skip_xff_append: true",
    "small": "max_request_headers_kb: 1",
    "p100": "proxy_100_continue: true",
    "uraint": "use_remote_address: true\n          internal_address_config: {cidr_ranges: [{address_prefix: 192.0.2.0, prefix_len: 24}]}",
    "h10": "http_protocol_options: {accept_http_10: true}",
    "h10host": "http_protocol_options: {accept_http_10: true, default_host_for_http_10: default.example}",
}

ROUTE_CONFIG = """
          route_config:
            name: local
            virtual_hosts:
            - name: nomatch
              domains: ["nomatch.example"]
              routes:
              - match: {prefix: "/never"}
                route: {cluster: up}
            - name: main
              domains: ["*"]
              routes:
              - match: {prefix: "/direct-empty"}
                direct_response: {status: 200}
              - match: {prefix: "/direct503"}
                direct_response: {status: 503, body: {inline_string: "down"}}
              - match: {prefix: "/direct"}
                direct_response: {status: 200, body: {inline_string: "hello direct"}}
              - match: {prefix: "/redir-https"}
                redirect: {https_redirect: true}
              - match: {prefix: "/redir-host"}
                redirect: {host_redirect: "example.com"}
              - match: {prefix: "/redir-path"}
                redirect: {path_redirect: "/new"}
              - match: {prefix: "/redir-301"}
                redirect: {path_redirect: "/new", response_code: PERMANENT_REDIRECT}
              - match: {prefix: "/empty"}
                route: {cluster: empty}
              - match: {prefix: "/refused"}
                route: {cluster: refused}
              - match: {prefix: "/timeout"}
                route: {cluster: up, timeout: 1s}
              - match: {prefix: "/"}
                route: {cluster: up}
"""

LISTENER_TMPL = """
  - name: {name}
    address:
      socket_address: {{address: 0.0.0.0, port_value: {port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          {extra}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{routes}"""

CLUSTERS_TMPL = """
  clusters:
  - name: up
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: {up}}}
  - name: empty
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: empty
      endpoints: []
  - name: refused
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: refused
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: {refused}}}
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def make_config(ports, up, refused, admin):
    out = ["admin:\n  address:\n    socket_address: {address: 127.0.0.1, port_value: %d}\n" % admin,
           "static_resources:\n  listeners:"]
    for name, extra in LISTENERS.items():
        out.append(LISTENER_TMPL.format(name=name, port=ports[name], extra=extra, routes=ROUTE_CONFIG))
    out.append(CLUSTERS_TMPL.format(up=up, refused=refused))
    return "".join(out)


class Env:
    def __init__(self):
        self.ports = {n: free_port() for n in LISTENERS}
        self.up = free_port()
        self.refused = free_port()  # nothing listens here
        self.admin = free_port()
        cfg = make_config(self.ports, self.up, self.refused, self.admin)
        self.cfg_path = os.path.join(SCRATCH, "envoy.yaml")
        with open(self.cfg_path, "w") as f:
            f.write(cfg)
        upstream.start(self.up)
        self.log = open(os.path.join(SCRATCH, "envoy.log"), "w")
        self.proc = subprocess.Popen(
            ["envoy", "-c", self.cfg_path, "--concurrency", "1", "--disable-hot-restart",
             "-l", "warn"], stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(200):
            try:
                r = urllib.request.urlopen("http://127.0.0.1:%d/ready" % self.admin, timeout=1)
                if r.read().strip() == b"LIVE":
                    break
            except Exception:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("envoy did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


EXT_IP = "192.0.2.2"  # eth0 address on this host: non-RFC1918 => "external" client


def exchange(port, data, idle=0.6, src=None, dst="127.0.0.1", steps=None, max_wait=8):
    """Send `data` (or a list of (bytes, pause) steps), read until the peer closes or
    `idle` seconds pass without data.  Returns (response_bytes, closed_by_peer)."""
    s = socket.socket()
    if src:
        s.bind((src, 0))
    s.connect((dst, port))
    chunks = []
    if steps is None:
        steps = [(data, 0)]
    for d, pause in steps:
        s.sendall(d)
        if pause:
            end = time.time() + pause
            s.settimeout(0.05)
            while time.time() < end:
                try:
                    x = s.recv(65536)
                    if not x:
                        break
                    chunks.append(x)
                except TimeoutError:
                    pass
                except ConnectionResetError:
                    break
            chunks.append(b"<<pause>>")
    s.settimeout(idle)
    closed = False
    start = time.time()
    while time.time() - start < max_wait:
        try:
            x = s.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            closed = "RST"
            break
        if not x:
            closed = True
            break
        chunks.append(x)
    resp = b"".join(chunks)
    if not closed and b"connection: close" in resp.lower():
        # Envoy uses a delayed close; wait up to 3 s to see when it closes.
        t0 = time.time()
        s.settimeout(3)
        try:
            x = s.recv(65536)
            closed = "after %.1fs more" % (time.time() - t0) if not x else "no (more data)"
        except TimeoutError:
            closed = "not within 3s"
        except ConnectionResetError:
            closed = "RST after %.1fs more" % (time.time() - t0)
    s.close()
    return resp, closed


def show(b):
    """CRLF rendered as a line break; bare CR/LF and non-printables escaped."""
    parts = b.split(b"\r\n")
    out = []
    for p in parts:
        s = ""
        for c in p:
            if c == 0x0A:
                s += "\\n"
            elif c == 0x0D:
                s += "\\r"
            elif 32 <= c < 127:
                s += chr(c)
            else:
                s += "\\x%02x" % c
        if len(s) > 200:
            s = s[:120] + "...[line truncated in report; %d chars total]" % len(s)
        out.append(s)
    return "\n".join(out)


def upstream_seen():
    """Bytes received by the upstream since the last reset, grouped by connection."""
    byconn = {}
    for cid, d in upstream.snapshot():
        byconn.setdefault(cid, b"")
        byconn[cid] += d
    return byconn


RESULTS = []


def case(title, port, data, idle=0.6, src=None, dst="127.0.0.1", steps=None, settle=0.3, max_wait=8):
    upstream.reset()
    resp, closed = exchange(port, data, idle=idle, src=src, dst=dst, steps=steps, max_wait=max_wait)
    time.sleep(settle)
    seen = upstream_seen()
    txt = ["### " + title, "", "client sent:", "```", show(data if steps is None else b"".join(d for d, _ in steps)), "```"]
    if seen:
        for cid, d in seen.items():
            txt += ["upstream received (conn %d):" % cid, "```", show(d), "```"]
    else:
        txt += ["upstream received: nothing"]
    txt += ["client received (connection closed by Envoy: %s):" % closed, "```", show(resp), "```", ""]
    out = "\n".join(txt)
    print(out, flush=True)
    RESULTS.append(out)
    return resp, seen, closed
