#!/usr/bin/env bash
# A throwaway single-node NATS server with JetStream on loopback, for tests.
#
# Usage: scripts/infra/nats.sh <command>
#   ensure   make sure a JetStream-capable nats-server exists; print its path
#   start    start the server (no-op if ours is already running)
#   wait     block until it is healthy with JetStream on (deadline)
#   up       start + wait
#   stop     stop it (SIGTERM, then SIGKILL) and forget its state
#   status   exit 0 if ours is running
#   env      print `export NATTER_TEST_NATS_URL=...`
#
# Environment:
#   NATTER_INFRA_DIR          runtime state (default: <repo>/target/infra)
#   NATTER_NATS_PORT          client port; unset = 4222 if free, else a free one
#   NATTER_NATS_MONITOR_PORT  monitoring port; unset = 8222 if free, else a free one
#   NATTER_NATS_TIMEOUT       readiness deadline in seconds (default 30)
#   NATTER_NATS_MIN_VERSION   oldest acceptable server (default 2.9.0)
#   NATTER_NATS_GO_VERSION    version built with `go install` when the
#                             Debian package is missing or too old (v2.15.2)
#   NATS_SERVER_BIN           use this binary, skip all install logic
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
infra_dir=${NATTER_INFRA_DIR:-$repo_root/target/infra}
state_dir=$infra_dir/nats
log_file=$infra_dir/logs/nats.log
cache_dir=${XDG_CACHE_HOME:-$HOME/.cache}/natter
min_version=${NATTER_NATS_MIN_VERSION:-2.9.0}
go_version=${NATTER_NATS_GO_VERSION:-v2.15.2}
timeout_s=${NATTER_NATS_TIMEOUT:-30}

name=nats
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# version_ge A B: true if dotted version A >= B.
version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]; }

server_version() { "$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p' | head -n1; }

usable() {
  local bin=$1 v
  [[ -x $bin ]] || return 1
  v=$(server_version "$bin")
  [[ -n $v ]] && version_ge "$v" "$min_version"
}

# --- commands ---

cmd_ensure() {
  local bin go_bin="$cache_dir/nats-server-$go_version/bin/nats-server"
  if [[ -n ${NATS_SERVER_BIN:-} ]]; then
    usable "$NATS_SERVER_BIN" || die "NATS_SERVER_BIN=$NATS_SERVER_BIN is not a nats-server >= $min_version"
    echo "$NATS_SERVER_BIN"; return
  fi
  # Debian's package first (bookworm: 2.9.10, JetStream included, installs in
  # seconds), so every machine tests against the same server whatever else
  # happens to be on PATH.
  if usable /usr/sbin/nats-server; then echo /usr/sbin/nats-server; return; fi
  if [[ ! -x /usr/sbin/nats-server ]]; then
    log "installing Debian package nats-server"
    if apt_install nats-server; then
      # On a systemd host the package starts a service on 4222; we run our own.
      if command -v systemctl >/dev/null && systemctl is-active --quiet nats-server 2>/dev/null; then
        systemctl disable --now nats-server >&2 || true
      fi
      if usable /usr/sbin/nats-server; then echo /usr/sbin/nats-server; return; fi
    fi
  fi

  for bin in "$go_bin" "$(command -v nats-server || true)"; do
    if [[ -n $bin ]] && usable "$bin"; then echo "$bin"; return; fi
  done
  command -v go >/dev/null || die "no nats-server >= $min_version and no Go toolchain to build one"
  log "building nats-server $go_version with go install (about a minute)"
  mkdir -p "$(dirname "$go_bin")"
  GOBIN=$(dirname "$go_bin") go install "github.com/nats-io/nats-server/v2@$go_version" >&2 \
    || die "go install nats-server $go_version failed"
  usable "$go_bin" || die "$go_bin is not usable"
  echo "$go_bin"
}

cmd_start() {
  local bin port mport pid
  if pid=$(our_pid); then
    log "already running (pid $pid) on port $(<"$state_dir/port")"
    return 0
  fi
  bin=$(cmd_ensure)
  # Stale state from a crashed or killed run: start clean.
  rm -rf "$state_dir"
  mkdir -p "$state_dir/jetstream" "$(dirname "$log_file")"
  port=${NATTER_NATS_PORT:-$(pick_port 4222)}
  mport=${NATTER_NATS_MONITOR_PORT:-$(pick_port 8222)}
  port_in_use "$port" && die "port $port is already in use (set NATTER_NATS_PORT)"
  port_in_use "$mport" && die "monitor port $mport is already in use (set NATTER_NATS_MONITOR_PORT)"

  # JetStream limits keep the server from reserving most of the machine.
  cat >"$state_dir/nats.conf" <<EOF
server_name: natter-test
listen: 127.0.0.1:$port
http: 127.0.0.1:$mport
jetstream {
  store_dir: "$state_dir/jetstream"
  max_memory_store: 512MB
  max_file_store: 4GB
}
EOF
  echo "$port" >"$state_dir/port"
  echo "$mport" >"$state_dir/monitor_port"
  log "starting $("$bin" --version) on 127.0.0.1:$port (monitor $mport), log $log_file"
  # setsid: own session, so a Ctrl-C in the caller's terminal does not kill
  # it and `scripts/test up` can leave it running after the shell exits.
  setsid "$bin" -c "$state_dir/nats.conf" </dev/null >"$log_file" 2>&1 &
  echo $! >"$state_dir/pid"
}

# Healthy once listening with JetStream on: /healthz is 200; older servers
# ignore js-enabled-only, so /jsz must also not report JetStream disabled.
nats_ready() {
  local mport
  mport=$(<"$state_dir/monitor_port")
  curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$mport/healthz?js-enabled-only=true" 2>/dev/null \
    && curl -fsS --max-time 2 "http://127.0.0.1:$mport/jsz" 2>/dev/null | grep -q '"config"' \
    && ! curl -fsS --max-time 2 "http://127.0.0.1:$mport/jsz" 2>/dev/null | grep -q '"disabled": *true' \
    && log "ready on 127.0.0.1:$(<"$state_dir/port") (pid $1)"
}

cmd_wait() {
  [[ -f $state_dir/monitor_port ]] || die "not started"
  wait_ready "$timeout_s" 0.2 nats_ready
}

cmd_env() {
  our_pid >/dev/null || die "not running"
  echo "export NATTER_TEST_NATS_URL=nats://127.0.0.1:$(<"$state_dir/port")"
}

case ${1:-} in
  ensure) cmd_ensure ;;
  start) cmd_start ;;
  wait) cmd_wait ;;
  up) cmd_start && cmd_wait ;;
  stop) stop_server 10 ;;
  status) our_pid >/dev/null ;;
  env) cmd_env ;;
  *) usage ;;
esac
