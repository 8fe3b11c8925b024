#!/usr/bin/env bash
# Sets up (scripts/setup.sh), builds, and runs the demo: a seeded payment workload through
# gateway-side bridge, NATS, workers and processor, with invariant checks and a report in
# reports/demo-<seed>-<time>/. Extra arguments go to `harness demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p harness -p mock-worker
exec target/release/harness demo "$@"
