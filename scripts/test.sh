#!/usr/bin/env bash
# Sets up (scripts/setup.sh), checks formatting and lints, and runs the whole test suite
# against real NATS.
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
# Habits first: they fail in seconds, the suite takes minutes.
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
scripts/check-cycles.sh >/dev/null || { scripts/check-cycles.sh | tail -20; exit 1; }
cargo build --workspace --bins
cargo test --workspace "$@"
