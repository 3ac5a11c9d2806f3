# Shared by the scripts in tests/env: paths, logging and small process helpers.
# Sourced, never run; every script that sources it runs with `set -euo pipefail`.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# Per-checkout state (service data, logs, the env file). Under /tmp rather than the checkout so
# that the unprivileged user PostgreSQL runs as can reach it whatever the checkout's permissions.
repo_key=$(printf '%s' "$ROOT" | sha256sum | cut -c1-10)
STATE=${INFRAPILOT_TEST_STATE:-${TMPDIR:-/tmp}/infrapilot-test-$repo_key}
# Caches that survive across checkouts and runs (the Python tools).
CACHE=${INFRAPILOT_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/infrapilot-test}
ENV_FILE=$STATE/env.sh

log() { printf '[test-env] %s\n' "$*" >&2; }
die() { printf '[test-env] error: %s\n' "$*" >&2; exit 1; }

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "'$*' needs root and sudo is not available"
  fi
}

# A free TCP port on loopback. The port is released before use, so another process could take
# it in between; services are started one after the other, which makes that unlikely.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits until something accepts TCP connections on 127.0.0.1:PORT, or fails naming the service.
wait_port() {
  local name=$1 port=$2 deadline=$((SECONDS + ${3:-30}))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "$name did not listen on 127.0.0.1:$port (log: $STATE/logs/$name.log)"
    sleep 0.1
  done
}

# Starts a long-running service in its own session, logging to $STATE/logs/NAME.log and
# recording its pid so that `services.sh down` can stop it.
start_service() {
  local name=$1; shift
  mkdir -p "$STATE/logs" "$STATE/pids"
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$STATE/pids/$name"
}

stop_service() {
  local name=$1 pidfile=$STATE/pids/$1 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  log "stopped $name"
}
