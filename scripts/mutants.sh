#!/usr/bin/env bash
# Measures test power: cargo-mutants over one scope, with only that crate's own tests, against
# local nats-server processes (no container start per mutant). Writes reports/mutants/<scope>/.
#
#   scripts/mutants.sh bridge         # nats-bridge, every file but metrics rendering and AsyncAPI
#   scripts/mutants.sh worker         # mock-worker's claims (store.rs) and handler
#   scripts/mutants.sh gateway-store  # the gateway's attempt store (its state machine)
#
# Extra arguments go to cargo-mutants (e.g. `--shard 1/4`, `--iterate`, `-j 2`). The caught ratio
# is caught / (caught + missed); timeouts count as caught, unviable mutants are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
scope="${1:?usage: scripts/mutants.sh bridge|worker|gateway-store [cargo-mutants args]}"
shift
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh >/dev/null
command -v cargo-mutants >/dev/null || cargo install cargo-mutants --locked --version 27.1.0
export HARNESS_NATS_BACKEND=process

case "$scope" in
  bridge)
    # Metrics rendering and the AsyncAPI document are left out: their mutants are mostly text
    # that tests/snapshots.rs and tests/contract.rs pin, and they would double the run.
    args=(-p nats-bridge -e bridge/src/metrics.rs -e bridge/src/asyncapi.rs) ;;
  worker)
    args=(-p mock-worker -f worker/src/store.rs -f worker/src/handler.rs) ;;
  gateway-store)
    # The store's own unit tests and the model test drive every transition; only they are
    # built per mutant (-C applies to the build as well as the test run).
    args=(-p gateway -f gateway/src/store.rs -C --lib -C --test=gateway_model) ;;
  *)
    echo "unknown scope: $scope (bridge, worker or gateway-store)" >&2
    exit 2 ;;
esac

out="reports/mutants/$scope"
mkdir -p "$out"
status=0
cargo mutants "${args[@]}" --test-workspace=false --copy-target=true --timeout 120 --output "$out" "$@" || status=$?
dir="$out/mutants.out"
caught=$(( $(wc -l <"$dir/caught.txt") + $(wc -l <"$dir/timeout.txt") ))
missed=$(wc -l <"$dir/missed.txt")
if (( caught + missed > 0 )); then
  echo "mutants $scope: $caught caught, $missed missed: $(( 100 * caught / (caught + missed) ))% caught (missed: $dir/missed.txt)"
fi
# cargo-mutants exits 2 when some mutants were missed and 3 when some timed out: those are
# measurements, not failures (a timeout counts as caught above).
if (( status != 0 && status != 2 && status != 3 )); then exit "$status"; fi
