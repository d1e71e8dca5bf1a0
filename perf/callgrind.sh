#!/bin/bash
# Counts user-space instructions (valgrind's callgrind) for N keep-alive requests (h2load,
# 16 connections, 1 thread) through pyproxy's engine without Python (core/examples/serve), or
# through HAProxy or nginx, all in front of the same nginx upstream. Instruction counts are
# repeatable on a noisy machine; run twice with different N and difference the totals to drop
# start-up. Needs valgrind, h2load, nginx (and haproxy for that target).
#
#   perf/callgrind.sh [pyproxy|haproxy|nginx]     N=40000 by default; P=/1k for a 1 KiB response;
#   ROUTES=1000 (pyproxy only): route i is prefix /rNNNN/ to its own cluster, as perf/run's scenario 5,
#   and the load asks for the last one; ACCESS_LOG=1 (pyproxy only): an access log in Envoy's default
#   format to a file (work dir), as an edge proxy usually has (LOG_FORMAT=... another format)
set -euo pipefail
target=${1:-pyproxy}
N=${N:-40000}
P=${P:-/}
ROUTES=${ROUTES:-0}
ACCESS_LOG=${ACCESS_LOG:-0}
LOG_FORMAT=${LOG_FORMAT:-}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$root/perf/work/callgrind
mkdir -p "$work/tmp" "$work/www"
cd "$work"
head -c 1024 /dev/zero | tr '\0' x > www/1k
cat > upstream.conf <<CONF
worker_processes 1; daemon off; pid $work/upstream.pid; error_log $work/upstream.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000000; sendfile on; open_file_cache max=16;
  client_body_temp_path tmp; proxy_temp_path tmp; fastcgi_temp_path tmp; uwsgi_temp_path tmp; scgi_temp_path tmp;
  server { listen 127.0.0.1:18481 reuseport; root www; location = /1k { } location / { return 200 "ok"; } } }
CONF
nginx -p "$work/" -c "$work/upstream.conf" & upstream=$!
trap 'kill $upstream $(jobs -p) 2>/dev/null || true' EXIT
out=$work/callgrind.out.$target
rm -f "$out"
cg=(valgrind --tool=callgrind --callgrind-out-file="$out")
case $target in
  pyproxy)
    cargo build -q --profile profiling --example serve -p pyproxy-core --manifest-path "$root/Cargo.toml"
    python3 - "$ROUTES" "$ACCESS_LOG" "$work/access.log" "$LOG_FORMAT" > snap.json <<'PY'
import json, sys
n = int(sys.argv[1])
logs = [] if sys.argv[2] == "0" else [{"sink": {"file": sys.argv[3]}, "format": {"text": {"text": sys.argv[4] or (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    '%RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% '
    '"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n')}}}]
up = {"address": "127.0.0.1", "port": 18481}
routes = [{"match": {"path": {"prefix": f"/r{i:04d}/"}}, "action": {"route": {"cluster": f"c{i:04d}"}}}
          for i in range(n)]
routes.append({"match": {"path": {"prefix": "/"}}, "action": {"route": {"cluster": "up"}}})
clusters = [{"name": f"c{i:04d}", "type": "STATIC", "endpoints": [up]} for i in range(n)]
clusters.append({"name": "up", "type": "STATIC", "endpoints": [up]})
print(json.dumps({"listeners": [{"name": "l", "address": "127.0.0.1", "port": 18480, "hcm": {
    "stat_prefix": "ingress_http", "generate_request_id": False, "access_log": logs,
    "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]}}}],
    "clusters": clusters}))
PY
    # serve runs until its stdin closes.
    (sleep 3600 | "${cg[@]}" "$root/target/profiling/examples/serve" snap.json 1 >cg.log 2>&1) & proxy=$!
    stop() { pkill -f "sleep 3600" || true; } ;;
  haproxy)
    cat > haproxy.cfg <<CONF
global
    nbthread 1
    maxconn 4000
    tune.bufsize 16384
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 600s
    timeout server 600s
frontend bench
    bind 127.0.0.1:18480
    default_backend upstream
backend upstream
    server upstream 127.0.0.1:18481
CONF
    "${cg[@]}" haproxy -f haproxy.cfg >cg.log 2>&1 & proxy=$!
    stop() { kill -INT $proxy; } ;;
  nginx)
    cat > proxy.conf <<CONF
worker_processes 1; daemon off; master_process off; pid $work/proxy.pid; error_log stderr error;
events { worker_connections 4000; }
http { access_log off; keepalive_requests 100000000;
  client_body_temp_path tmp; proxy_temp_path tmp; fastcgi_temp_path tmp; uwsgi_temp_path tmp; scgi_temp_path tmp;
  upstream up { server 127.0.0.1:18481; keepalive 256; keepalive_requests 100000000; }
  server { listen 127.0.0.1:18480; location / { proxy_pass http://up; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_buffering off; proxy_buffer_size 16k; proxy_buffers 4 16k; } } }
CONF
    "${cg[@]}" nginx -p "$work/" -c "$work/proxy.conf" >cg.log 2>&1 & proxy=$!
    stop() { kill -QUIT $proxy; } ;;
  *) echo "usage: $0 [pyproxy|haproxy|nginx]" >&2; exit 2 ;;
esac
for _ in $(seq 300); do curl -s -o /dev/null http://127.0.0.1:18480/ && break; sleep 0.1; done
h2load --h1 -n "$N" -c 16 -t 1 "http://127.0.0.1:18480$P" | grep -E "^requests:"
stop
wait $proxy 2>/dev/null || true
callgrind_annotate "$out" | grep "PROGRAM TOTALS"
echo "profile: $out (callgrind_annotate $out)"
