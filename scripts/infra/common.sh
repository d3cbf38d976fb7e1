# What the scripts that run a throwaway test server share. A script sets
# `name`, `state_dir` and `log_file`, then sources this file.

log() { printf '%s: %s\n' "$name" "$*" >&2; }
die() { log "error: $*"; exit 1; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Prefer the conventional port so developers can use fixed addresses; else
# a random free one below the kernel's ephemeral range (32768+), so it
# cannot clash with outgoing connections.
pick_port() {
  local preferred=$1 p i
  if ! port_in_use "$preferred"; then echo "$preferred"; return; fi
  for i in $(seq 1 100); do
    p=$((20000 + RANDOM % 12000))
    if ! port_in_use "$p"; then echo "$p"; return; fi
  done
  die "no free port found (tried $i)"
}

# Only trust a pid whose command line mentions our state dir: pid files can
# outlive the process and the number may now belong to something else.
our_pid() {
  local pid
  [[ -f $state_dir/pid ]] || return 1
  pid=$(<"$state_dir/pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$state_dir/" || return 1
  echo "$pid"
}

# wait_exec: call right after starting the server in the background and
# writing its pid file. Until the background shell has exec'd the server,
# the pid's command line is the shell's, which our_pid does not trust; so
# a `wait` right after `start` would take a starting server for a dead
# one. Returns once our_pid sees it, or once the process is gone (wait
# then reports that), or after 5 s.
wait_exec() {
  local pid i
  pid=$(<"$state_dir/pid")
  for i in $(seq 1 100); do
    our_pid >/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.05
  done
}

# Installs Debian packages; fails without root or apt-get.
apt_install() {
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then return 1; fi
  # apt-get install needs fresh lists on a new machine.
  apt-get update -qq >&2 || return 1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# wait_ready TIMEOUT INTERVAL READY: runs READY (given the pid) every
# INTERVAL seconds until it succeeds. Exits with the log's tail if the
# server dies first or TIMEOUT seconds pass.
wait_ready() {
  local timeout=$1 interval=$2 ready=$3 pid deadline
  deadline=$((SECONDS + timeout))
  while :; do
    if ! pid=$(our_pid); then
      log "exited during startup; last log lines:"
      tail -n 60 "$log_file" >&2 || true
      exit 1
    fi
    "$ready" "$pid" && return 0
    if ((SECONDS >= deadline)); then
      log "not ready after ${timeout}s; last log lines:"
      tail -n 60 "$log_file" >&2 || true
      exit 1
    fi
    sleep "$interval"
  done
}

# stop_server GRACE: SIGTERM, SIGKILL after GRACE seconds, then forget the
# state. The log stays under logs/ for inspection; the data is disposable.
stop_server() {
  local grace=$1 pid i
  if pid=$(our_pid); then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 $((grace * 5))); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid ignored SIGTERM for ${grace}s; killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped (pid $pid)"
  fi
  rm -rf "$state_dir"
}

# usage: the comment block at the top of the calling script.
usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
  exit 2
}
