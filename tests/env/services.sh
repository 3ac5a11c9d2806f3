#!/usr/bin/env bash
# Starts (`up`) or stops (`down`) the servers the tests talk to, all on loopback:
#   - a throwaway PostgreSQL 15 cluster;
#   - pebble (Let's Encrypt's test ACME server) and pebble-challtestsrv as its DNS, so that no
#     lookup leaves the machine;
#   - aiosmtpd as an SMTP sink writing a maildir, and a TLS sink writing to the same maildir
#     (STARTTLS and implicit TLS, both with AUTH, its certificate from a test CA).
# `up VENV` writes $STATE/env.sh, the environment variables through which the tests find them.
# `up` stops whatever an earlier `up` left running first, so it can be run any number of times.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PG_BIN=/usr/lib/postgresql/15/bin

postgres_up() {
  local dir=$STATE/postgres port password
  port=$(free_port)
  password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  as_root rm -rf "$dir"; mkdir -p "$dir"
  # initdb refuses to run as root: the cluster belongs to an unprivileged user.
  local runas=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin postgres
    chown postgres: "$dir"; chmod 700 "$dir"
    runas=(runuser -u postgres --)
  fi
  printf '%s\n' "$password" > "$dir/.pwfile"; chmod 600 "$dir/.pwfile"
  [ ${#runas[@]} = 0 ] || chown postgres: "$dir/.pwfile"
  "${runas[@]}" "$PG_BIN/initdb" -D "$dir/data" --no-sync --username=postgres --pwfile="$dir/.pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 >"$STATE/logs/initdb.log" 2>&1 \
    || { cat "$STATE/logs/initdb.log" >&2; die "initdb failed"; }
  rm -f "$dir/.pwfile"
  "${runas[@]}" "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null \
    || { tail -n 20 "$dir/server.log" >&2; die "PostgreSQL did not start"; }
  echo "$port" > "$dir/port"
  cat >> "$ENV_FILE" <<ENV
export INFRAPILOT_TEST_PG_URL='postgres://postgres:$password@127.0.0.1:$port/postgres'
export INFRAPILOT_TEST_PG_BIN='$PG_BIN'
ENV
  log "PostgreSQL 15 on 127.0.0.1:$port"
}

postgres_down() {
  local dir=$STATE/postgres
  [ -d "$dir/data" ] || return 0
  local runas=()
  [ "$(id -u)" != 0 ] || runas=(runuser -u postgres --)
  "${runas[@]}" "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  as_root rm -rf "$dir"
  log "stopped PostgreSQL"
}

# A CA of its own and a certificate for localhost and 127.0.0.1 that it signs, in DIR: for
# pebble's HTTPS listener (pebble ships none) and the TLS SMTP sink. Tests trust the CA.
test_certificates() {
  local dir=$1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj '/CN=InfraPilot test CA' -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=localhost' \
    -keyout "$dir/listener.key" -out "$dir/listener.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$dir/listener.ext"
  openssl x509 -req -in "$dir/listener.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 30 -extfile "$dir/listener.ext" -out "$dir/listener.pem" 2>/dev/null
}

pebble_up() {
  local dir=$STATE/pebble
  rm -rf "$dir"; mkdir -p "$dir"
  test_certificates "$dir"
  local dns_port mgmt_port acme_port acme_mgmt_port http01_port tlsalpn_port
  dns_port=$(free_port); mgmt_port=$(free_port); acme_port=$(free_port); acme_mgmt_port=$(free_port)
  http01_port=$(free_port); tlsalpn_port=$(free_port)
  # challtestsrv answers pebble's DNS queries (every name resolves to 127.0.0.1). Its challenge
  # listeners are off: in the tests the edge nginx serves HTTP-01 itself.
  start_service challtestsrv pebble-challtestsrv -defaultIPv4 127.0.0.1 -defaultIPv6 '' \
    -dns01 "127.0.0.1:$dns_port" -management "127.0.0.1:$mgmt_port" -http01 '' -https01 '' -tlsalpn01 ''
  wait_port challtestsrv "$mgmt_port"
  cat > "$dir/pebble.json" <<JSON
{
  "pebble": {
    "listenAddress": "127.0.0.1:$acme_port",
    "managementListenAddress": "127.0.0.1:$acme_mgmt_port",
    "certificate": "$dir/listener.pem",
    "privateKey": "$dir/listener.key",
    "httpPort": $http01_port,
    "tlsPort": $tlsalpn_port,
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false,
    "certificateValidityPeriod": 45
  }
}
JSON
  # Certificates live 45 s, so that a test sees one renewed (two thirds in: after 30 s).
  # NOSLEEP: no random validation delays. NONCEREJECT=0: pebble otherwise rejects 5% of nonces
  # at random, which makes tests flaky without testing anything of ours.
  PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 \
    start_service pebble pebble -config "$dir/pebble.json" -dnsserver "127.0.0.1:$dns_port"
  wait_port pebble "$acme_port"
  wait_port pebble "$acme_mgmt_port"
  cat >> "$ENV_FILE" <<ENV
export INFRAPILOT_TEST_ACME_DIRECTORY='https://127.0.0.1:$acme_port/dir'
export INFRAPILOT_TEST_ACME_MANAGEMENT='https://127.0.0.1:$acme_mgmt_port'
export INFRAPILOT_TEST_ACME_CA='$dir/ca.pem'
export INFRAPILOT_TEST_ACME_HTTP01_PORT='$http01_port'
export INFRAPILOT_TEST_ACME_DNS='127.0.0.1:$dns_port'
export INFRAPILOT_TEST_CHALLTESTSRV='http://127.0.0.1:$mgmt_port'
ENV
  log "pebble on 127.0.0.1:$acme_port (HTTP-01 checked on port $http01_port, DNS on 127.0.0.1:$dns_port)"
}

smtp_up() {
  local venv=$1 port maildir=$STATE/maildir
  port=$(free_port)
  rm -rf "$maildir"; mkdir -p "$maildir"/{new,cur,tmp}
  start_service smtp "$venv/bin/python" -m aiosmtpd -n -l "127.0.0.1:$port" -c aiosmtpd.handlers.Mailbox "$maildir"
  wait_port smtp "$port"
  cat >> "$ENV_FILE" <<ENV
export INFRAPILOT_TEST_SMTP='127.0.0.1:$port'
export INFRAPILOT_TEST_MAILDIR='$maildir'
ENV
  log "SMTP sink on 127.0.0.1:$port writing to $maildir"
}

smtp_tls_up() {
  local venv=$1 dir=$STATE/smtp-tls starttls_port tls_port password
  rm -rf "$dir"; mkdir -p "$dir"
  test_certificates "$dir"
  starttls_port=$(free_port); tls_port=$(free_port)
  password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  start_service smtp-tls env SINK_USER=alerts "SINK_PASSWORD=$password" \
    "$venv/bin/python" -W ignore::DeprecationWarning "$ROOT/tests/env/smtp_tls_sink.py" \
    "$STATE/maildir" "$dir/listener.pem" "$dir/listener.key" "$starttls_port" "$tls_port"
  wait_port smtp-tls "$starttls_port"
  wait_port smtp-tls "$tls_port"
  cat >> "$ENV_FILE" <<ENV
export INFRAPILOT_TEST_SMTP_STARTTLS='localhost:$starttls_port'
export INFRAPILOT_TEST_SMTP_TLS='localhost:$tls_port'
export INFRAPILOT_TEST_SMTP_CA='$dir/ca.pem'
export INFRAPILOT_TEST_SMTP_USER='alerts'
export INFRAPILOT_TEST_SMTP_PASSWORD='$password'
ENV
  log "TLS SMTP sink: STARTTLS on 127.0.0.1:$starttls_port, TLS on 127.0.0.1:$tls_port, with AUTH"
}

down() {
  stop_service smtp-tls
  stop_service smtp
  stop_service pebble
  stop_service challtestsrv
  postgres_down
  rm -f "$ENV_FILE"
}

up() {
  local venv=${1:?usage: services.sh up VENV}
  down
  mkdir -p "$STATE/logs"
  {
    echo "# Written by tests/env/services.sh: source it to run tests by hand."
    echo "export INFRAPILOT_TEST_STATE='$STATE'"
    echo "export INFRAPILOT_TEST_PYTHON='$venv/bin/python'"
  } > "$ENV_FILE.tmp"
  ENV_FILE=$ENV_FILE.tmp
  postgres_up
  pebble_up
  smtp_up "$venv"
  smtp_tls_up "$venv"
  mv "$ENV_FILE" "${ENV_FILE%.tmp}"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  *) die "usage: services.sh up VENV | down" ;;
esac
