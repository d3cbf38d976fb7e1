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

log() { printf 'nats: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- helpers (kept local to this script so it can be used on its own) ---

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Prefer the conventional port so developers can use fixed URLs; fall back to
# a random free one below the kernel's ephemeral range (32768+) to avoid
# colliding with outgoing connections.
pick_port() {
  local preferred=$1 p i
  if ! port_in_use "$preferred"; then echo "$preferred"; return; fi
  for i in $(seq 1 100); do
    p=$((20000 + RANDOM % 12000))
    if ! port_in_use "$p"; then echo "$p"; return; fi
  done
  die "no free port found (tried $i)"
}

# version_ge A B: true if dotted version A >= B.
version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]; }

server_version() { "$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p' | head -n1; }

usable() {
  local bin=$1 v
  [[ -x $bin ]] || return 1
  v=$(server_version "$bin")
  [[ -n $v ]] && version_ge "$v" "$min_version"
}

# Only trust a pid whose command line mentions our state dir: pid files can
# outlive a reboot and the number may now belong to something else.
our_pid() {
  local pid
  [[ -f $state_dir/pid ]] || return 1
  pid=$(<"$state_dir/pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$state_dir/" || return 1
  echo "$pid"
}

apt_install() {
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then return 1; fi
  # apt-get install needs fresh lists on a new machine.
  apt-get update -qq >&2 || return 1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
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

cmd_wait() {
  local pid mport deadline
  [[ -f $state_dir/monitor_port ]] || die "not started"
  mport=$(<"$state_dir/monitor_port")
  deadline=$((SECONDS + timeout_s))
  while :; do
    if ! pid=$(our_pid); then
      log "server exited during startup; last log lines:"
      tail -n 40 "$log_file" >&2 || true
      exit 1
    fi
    # /healthz is 200 once listening; older servers ignore js-enabled-only,
    # so also require /jsz to not report JetStream as disabled.
    if curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$mport/healthz?js-enabled-only=true" 2>/dev/null \
      && curl -fsS --max-time 2 "http://127.0.0.1:$mport/jsz" 2>/dev/null | grep -q '"config"' \
      && ! curl -fsS --max-time 2 "http://127.0.0.1:$mport/jsz" 2>/dev/null | grep -q '"disabled": *true'; then
      log "ready on 127.0.0.1:$(<"$state_dir/port") (pid $pid)"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      log "not ready after ${timeout_s}s; last log lines:"
      tail -n 40 "$log_file" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}

cmd_stop() {
  local pid i
  if pid=$(our_pid); then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid ignored SIGTERM for 10s; killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped (pid $pid)"
  fi
  # The log stays under logs/ for inspection; the store is disposable.
  rm -rf "$state_dir"
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
  stop) cmd_stop ;;
  status) our_pid >/dev/null ;;
  env) cmd_env ;;
  *) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac
