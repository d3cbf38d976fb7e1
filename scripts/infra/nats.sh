#!/usr/bin/env bash
# A throwaway single-node NATS server with JetStream on loopback, for tests
# and the benchmark.
#
# The project requires nats-server 2.12 or later: the first release with
# JetStream atomic batch publish (a batch stored all or nothing, checked
# against per-subject expectations such as
# Nats-Expected-Last-Subject-Sequence), which the design builds on. The
# floor is the server's, not the client's: async-nats 0.51 talks to older
# servers too (its 2.12 stream settings sit behind its `server_2_12`
# feature). The tests and the benchmark run one pinned release, the
# current one, built from source with `go install` into the cache (under a
# minute, once), never a distribution's package (Debian bookworm ships
# 2.9.10), so every machine tests against the same server.
#
# Usage: scripts/infra/nats.sh <command>
#   ensure   make sure the pinned nats-server is built; print its path
#   start    start the server (no-op if ours is already running)
#   wait     block until it is healthy with JetStream on (deadline)
#   up       start + wait
#   stop     stop it (SIGTERM, then SIGKILL) and forget its state
#   status   exit 0 if ours is running
#   env      print `export NATTER_TEST_NATS_URL=...` and NATTER_TEST_NATS_SERVER (the binary)
#   version  print the running server's version (from its /varz)
#
# Environment:
#   NATTER_INFRA_DIR          runtime state (default: <repo>/target/infra)
#   NATTER_NATS_PORT          client port; unset = 4222 if free, else a free one
#   NATTER_NATS_MONITOR_PORT  monitoring port; unset = 8222 if free, else a free one
#   NATTER_NATS_TIMEOUT       readiness deadline in seconds (default 30)
#   NATTER_NATS_VERSION       the release built and run (default v2.15.3)
#   NATTER_NATS_MIN_VERSION   oldest server accepted (default 2.12.0)
#   NATS_SERVER_BIN           use this binary (>= the minimum), build nothing
#   GO                        the go binary (default: go on PATH, else
#                             /usr/local/go/bin/go)
#   XDG_CACHE_HOME            the build goes to $XDG_CACHE_HOME/natter
#                             (default ~/.cache/natter)
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
infra_dir=${NATTER_INFRA_DIR:-$repo_root/target/infra}
state_dir=$infra_dir/nats
log_file=$infra_dir/logs/nats.log
cache_dir=${XDG_CACHE_HOME:-${HOME:-$repo_root/target}/.cache}/natter
nats_version=${NATTER_NATS_VERSION:-v2.15.3}
min_version=${NATTER_NATS_MIN_VERSION:-2.12.0}
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
  local prefix="$cache_dir/nats-server-$nats_version"
  local bin="$prefix/bin/nats-server"
  if [[ -n ${NATS_SERVER_BIN:-} ]]; then
    usable "$NATS_SERVER_BIN" || die "NATS_SERVER_BIN=$NATS_SERVER_BIN is not a nats-server >= $min_version"
    echo "$NATS_SERVER_BIN"; return
  fi
  version_ge "${nats_version#v}" "$min_version" \
    || die "NATTER_NATS_VERSION=$nats_version is older than the $min_version the project requires"
  [[ "v$(server_version "$bin")" == "$nats_version" ]] || build "$prefix"
  echo "$bin"
}

# build PREFIX: `go install` the pinned release into PREFIX/bin. Everything
# Go writes (module cache, build cache) goes to a scratch dir under the
# cache dir, removed afterwards, so the build needs no HOME or GOPATH of
# the caller's and works as root on a fresh machine. A lock keeps
# concurrent callers (tests and benchmark) from building at once.
build() {
  local prefix=$1 go gowork="$cache_dir/go-build" started rc=0 blog
  go=$(command -v "${GO:-go}" || command -v /usr/local/go/bin/go) \
    || die "no Go toolchain to build nats-server $nats_version (install Go or set GO)"
  mkdir -p "$cache_dir" || die "cannot create the cache dir $cache_dir"
  exec 9>"$cache_dir/.nats-server.lock"
  flock 9
  # Another caller may have built it while we waited for the lock.
  [[ "v$(server_version "$prefix/bin/nats-server")" != "$nats_version" ]] || return 0
  log "building nats-server $nats_version with $go install (about a minute, once)"
  rm -rf "$prefix" "$gowork"
  mkdir -p "$gowork" "$prefix"
  blog="$prefix.build.log"
  started=$SECONDS
  # CGO off: a static binary and no C compiler needed. -modcacherw: the
  # module cache is writable, so it can be removed. GOFLAGS and GOWORK
  # are set so that a caller's settings cannot change the build; GOPROXY
  # and GOTOOLCHAIN keep the caller's (or Go's defaults).
  env GOPATH="$gowork" GOMODCACHE="$gowork/pkg/mod" GOCACHE="$gowork/cache" \
    GOBIN="$prefix/bin.tmp" GOFLAGS=-modcacherw GOWORK=off GO111MODULE=on CGO_ENABLED=0 \
    "$go" install "github.com/nats-io/nats-server/v2@$nats_version" >"$blog" 2>&1 || rc=$?
  rm -rf "$gowork"
  if ((rc != 0)); then
    tail -n 30 "$blog" >&2
    die "go install github.com/nats-io/nats-server/v2@$nats_version failed (exit $rc); full output: $blog"
  fi
  # Moved into place last: an interrupted build never looks finished.
  mv "$prefix/bin.tmp" "$prefix/bin"
  [[ "v$(server_version "$prefix/bin/nats-server")" == "$nats_version" ]] \
    || die "the build in $prefix/bin reports $("$prefix/bin/nats-server" --version 2>&1), not $nats_version"
  log "built nats-server $nats_version in $((SECONDS - started)) s"
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
  # The store dir and, below it, the global account's streams dir exist
  # before the server starts, and the streams dir is never empty. When the
  # last file-backed stream is deleted, the server removes the then empty
  # streams dir and account dir, racing with a stream being created at that
  # moment ("could not create storage directory"): the conformance suite's
  # parallel tests hit it with 2.9.10, and 2.15 still has the same cleanup.
  # The placeholder's name is not a valid stream name (it has a dot) nor a
  # deleted stream's (those start with one); the server skips it, with a
  # warning at start-up.
  mkdir -p "$state_dir/store/jetstream/\$G/streams/natter.keep" "$(dirname "$log_file")"
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
  max_memory_store: 512MB
  max_file_store: 4GB
}
EOF
  echo "$port" >"$state_dir/port"
  echo "$mport" >"$state_dir/monitor_port"
  log "starting $("$bin" --version) on 127.0.0.1:$port (monitor $mport), log $log_file"
  # setsid: own session, so a Ctrl-C in the caller's terminal does not kill
  # it and `scripts/test up` can leave it running after the shell exits.
  setsid "$bin" -c "$state_dir/nats.conf" -sd "$state_dir/store" </dev/null >"$log_file" 2>&1 &
  echo $! >"$state_dir/pid"
  wait_exec
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
  # The binary too, for tests that run a server of their own (TLS).
  echo "export NATTER_TEST_NATS_SERVER=$(cmd_ensure)"
}

cmd_version() {
  our_pid >/dev/null || die "not running"
  curl -fsS --max-time 2 "http://127.0.0.1:$(<"$state_dir/monitor_port")/varz" \
    | sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' | head -n1 | grep . || die "no version in /varz"
}

case ${1:-} in
  ensure) cmd_ensure ;;
  start) cmd_start ;;
  wait) cmd_wait ;;
  up) cmd_start && cmd_wait ;;
  stop) stop_server 10 ;;
  status) our_pid >/dev/null ;;
  env) cmd_env ;;
  version) cmd_version ;;
  *) usage ;;
esac
