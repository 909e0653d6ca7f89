#!/usr/bin/env bash
# Set up everything chaosbed needs on a fresh machine; quick when already done.
# Python packages into .venv, Toxiproxy and Jaeger via `go install` into ./bin,
# Prometheus (and Chromium for the report test) from Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/bin
mkdir -p "$BIN"

say() { printf 'setup: %s\n' "$*"; }

# --- Python ---------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  say "installing Python packages"
  if ! { .venv/bin/python -m pip install -q --upgrade pip &&
         .venv/bin/python -m pip install -q -e '.[dev]'; } >.venv/pip.log 2>&1; then
    tail -n 30 .venv/pip.log >&2
    echo "setup: pip install failed (full log: .venv/pip.log)" >&2
    exit 3
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# --- Go binaries ----------------------------------------------------------
need_go() {
  command -v go >/dev/null 2>&1 || {
    echo "setup: $1 is missing and Go is not installed: install Go (https://go.dev/dl) or put '$1' on PATH" >&2
    exit 3
  }
}
if [ ! -x "$BIN/toxiproxy-server" ] && ! command -v toxiproxy-server >/dev/null 2>&1; then
  need_go toxiproxy-server
  say "building toxiproxy-server 2.12.0 (go install)"
  tmp=$(mktemp -d)
  GOBIN=$tmp go install -ldflags="-s -w -X github.com/Shopify/toxiproxy/v2.Version=2.12.0" \
    github.com/Shopify/toxiproxy/v2/cmd/server@v2.12.0
  mv "$tmp/server" "$BIN/toxiproxy-server"
  rm -rf "$tmp"
fi
if [ ! -x "$BIN/jaeger" ] && ! command -v jaeger >/dev/null 2>&1; then
  need_go jaeger
  say "building jaeger v2 from github.com/jaegertracing/jaeger@v1.76.0 (a few minutes the first time)"
  # `go install jaeger/cmd/jaeger@v1.76.0` is refused (its go.mod has replace
  # directives), so build the same module version from the module cache.
  src=$(go mod download -json github.com/jaegertracing/jaeger@v1.76.0 | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  (cd "$src" && go build -trimpath -ldflags="-s -w" -o "$BIN/jaeger" ./cmd/jaeger)
fi

# --- Debian packages --------------------------------------------------------
missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# validates docker-compose.yml in the tests (no Docker engine needed for `config`)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
# `make bench` counts the telemetry's instructions under cachegrind (benchmarks/bench_instructions.py)
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing ${missing[*]} (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing ${missing[*]}: install with 'sudo apt-get install ${missing[*]}'" >&2
    exit 3
  fi
fi
# Debian's prometheus package starts a system service on :9090; chaosbed starts its own.
if command -v systemctl >/dev/null 2>&1; then systemctl stop prometheus >/dev/null 2>&1 || true; fi
say "ready"
