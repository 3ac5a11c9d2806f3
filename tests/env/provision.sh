#!/usr/bin/env bash
# Installs what the tests need on this machine, idempotently: Debian packages (debootstrap for
# the images, pebble for ACME, swaks and openssl, zstd for compressed dump fixtures, libclang for
# building pg_query, socat for reaching Docker over TCP), the Python tools in a cached virtualenv, and
# the Docker test images. Prints the virtualenv's path on stdout.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DEBIAN_PACKAGES=(debootstrap pebble swaks openssl zstd libclang-dev socat)

install_debian_packages() {
  local missing=()
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} = 0 ] && return
  command -v apt-get >/dev/null || die "missing packages ${missing[*]}, and apt-get is not available to install them"
  log "installing ${missing[*]} with apt-get"
  as_root apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The PostgreSQL 15 server binaries (initdb, pg_ctl, pg_dump) must already be on the machine.
check_postgres() {
  [ -x /usr/lib/postgresql/15/bin/initdb ] \
    || die "PostgreSQL 15 server binaries are missing: apt-get install postgresql-15"
}

# A virtualenv keyed by the requirements' hash: unchanged requirements reuse it across runs and
# checkouts; changed ones get a fresh one.
python_tools() {
  local key; key=$(sha256sum "$ROOT/tests/env/requirements.txt" | cut -c1-12)
  local venv=$CACHE/venv-$key
  if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
    log "installing the Python test tools into $venv"
    rm -rf "$venv"; mkdir -p "$CACHE"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/tests/env/requirements.txt"
    touch "$venv/.complete"
  fi
  printf '%s\n' "$venv"
}

install_debian_packages
check_postgres
venv=$(python_tools)
"$ROOT/tests/env/images.sh"
printf '%s\n' "$venv"
