#!/usr/bin/env bash
# The test command. On a machine with a running Docker engine it provisions everything the
# suite needs (Debian packages, Python tools, Docker images: all cached), starts the test
# servers on loopback, runs every test of the workspace, and stops the servers again.
#
#   tests/run.sh                 the whole suite
#   tests/run.sh FILTER...       only tests whose name contains FILTER (passed to the runner)
#
# Tests run with cargo-nextest when it is installed, with `cargo test` otherwise.
set -euo pipefail
source "$(dirname "$0")/env/lib.sh"
cd "$ROOT"

started=$SECONDS
venv=$(tests/env/provision.sh | tail -n 1)

# Leftovers of an interrupted earlier run would only get in the way.
sweep_docker() {
  local ids
  ids=$(docker ps -aq --filter label=infrapilot.io/e2e)
  [ -z "$ids" ] || docker rm -f -v $ids >/dev/null
  # Throwaway restore servers, and makers of their warm images, that a stopped operator left.
  for label in infrapilot.io/backup-run infrapilot.io/warm-image-build=true; do
    ids=$(docker ps -aq --filter "label=$label")
    [ -z "$ids" ] || docker rm -f -v $ids >/dev/null
  done
  ids=$(docker network ls -q --filter label=infrapilot.io/e2e)
  [ -z "$ids" ] || docker network rm $ids >/dev/null
}
sweep_docker

tests/env/services.sh up "$venv"
cleanup() { tests/env/services.sh down; sweep_docker; }
trap cleanup EXIT
rm -rf "$STATE/tests"
# shellcheck source=/dev/null
source "$ENV_FILE"

log "building"
cargo build --workspace --all-targets --quiet
log "environment ready in $((SECONDS - started)) s; running the tests"

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast -- "$@"
fi
