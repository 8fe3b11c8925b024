#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite against real NATS.
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --workspace --bins
cargo test --workspace "$@"
