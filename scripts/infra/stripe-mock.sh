#!/usr/bin/env bash
# A throwaway stripe-mock on loopback: Stripe's own mock of its API, built
# from Stripe's OpenAPI description, which the payment tests open Checkout
# Sessions against. It answers every call with fixture data (the same
# `cs_...` id for every session) and checks requests against the API's
# schema, so a malformed request fails as it would at Stripe.
#
# Built from source with `go install`, pinned, into the cache (under a
# minute, once), like nats-server.
#
# Usage: scripts/infra/stripe-mock.sh <command>
#   ensure   make sure the pinned stripe-mock is built; print its path
#   start    start it (no-op if ours is already running)
#   wait     block until it answers (deadline)
#   up       start + wait
#   stop     stop it and forget its state
#   status   exit 0 if ours is running
#   env      print `export NATTER_TEST_STRIPE_URL=...`
#
# Environment:
#   NATTER_INFRA_DIR           runtime state (default: <repo>/target/infra)
#   NATTER_STRIPE_MOCK_PORT    HTTP port; unset = 12111 if free, else a free one
#   NATTER_STRIPE_MOCK_VERSION the release built and run (default v0.203.0)
#   STRIPE_MOCK_BIN            use this binary, build nothing
#   GO                         the go binary (default: go on PATH, else
#                              /usr/local/go/bin/go)
#   XDG_CACHE_HOME             the build goes to $XDG_CACHE_HOME/natter
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
infra_dir=${NATTER_INFRA_DIR:-$repo_root/target/infra}
state_dir=$infra_dir/stripe-mock
log_file=$infra_dir/logs/stripe-mock.log
cache_dir=${XDG_CACHE_HOME:-${HOME:-$repo_root/target}/.cache}/natter
version=${NATTER_STRIPE_MOCK_VERSION:-v0.203.0}

name=stripe-mock
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

cmd_ensure() {
  local prefix="$cache_dir/stripe-mock-$version"
  if [[ -n ${STRIPE_MOCK_BIN:-} ]]; then
    [[ -x $STRIPE_MOCK_BIN ]] || die "STRIPE_MOCK_BIN=$STRIPE_MOCK_BIN is not executable"
    echo "$STRIPE_MOCK_BIN"; return
  fi
  [[ -x $prefix/bin/stripe-mock ]] || build "$prefix"
  echo "$prefix/bin/stripe-mock"
}

# build PREFIX: `go install` the pinned release into PREFIX/bin, with
# everything Go writes in a scratch dir removed afterwards (as nats.sh).
build() {
  local prefix=$1 go gowork="$cache_dir/go-build-stripe-mock" rc=0 blog
  go=$(command -v "${GO:-go}" || command -v /usr/local/go/bin/go) \
    || die "no Go toolchain to build stripe-mock $version (install Go or set GO)"
  mkdir -p "$cache_dir" || die "cannot create the cache dir $cache_dir"
  exec 9>"$cache_dir/.stripe-mock.lock"
  flock 9
  [[ ! -x $prefix/bin/stripe-mock ]] || return 0
  log "building stripe-mock $version with $go install (once)"
  rm -rf "$prefix" "$gowork"
  mkdir -p "$gowork" "$prefix"
  blog="$prefix.build.log"
  env GOPATH="$gowork" GOMODCACHE="$gowork/pkg/mod" GOCACHE="$gowork/cache" \
    GOBIN="$prefix/bin.tmp" GOFLAGS=-modcacherw GOWORK=off GO111MODULE=on CGO_ENABLED=0 \
    "$go" install "github.com/stripe/stripe-mock@$version" >"$blog" 2>&1 || rc=$?
  rm -rf "$gowork"
  if ((rc != 0)); then
    tail -n 30 "$blog" >&2
    die "go install github.com/stripe/stripe-mock@$version failed (exit $rc); full output: $blog"
  fi
  mv "$prefix/bin.tmp" "$prefix/bin"
}

cmd_start() {
  local bin port https_port pid
  if pid=$(our_pid); then
    log "already running (pid $pid) on port $(<"$state_dir/port")"
    return 0
  fi
  bin=$(cmd_ensure)
  rm -rf "$state_dir"
  mkdir -p "$state_dir" "$(dirname "$log_file")"
  port=${NATTER_STRIPE_MOCK_PORT:-$(pick_port 12111)}
  port_in_use "$port" && die "port $port is already in use (set NATTER_STRIPE_MOCK_PORT)"
  echo "$port" >"$state_dir/port"
  # It also serves HTTPS, on 12112 unless told: another copy (another
  # checkout's tests) may hold that one.
  https_port=$(pick_port 12112)
  # Started through a link in the state dir, so our_pid recognises it by
  # its command line.
  ln -s "$bin" "$state_dir/stripe-mock"
  log "starting stripe-mock $version on 127.0.0.1:$port, log $log_file"
  setsid "$state_dir/stripe-mock" -http-addr "127.0.0.1:$port" -https-addr "127.0.0.1:$https_port" </dev/null >"$log_file" 2>&1 &
  echo $! >"$state_dir/pid"
  wait_exec
}

# Ready once it answers an API call (401 without a key is an answer).
ready() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$(<"$state_dir/port")/v1/checkout/sessions" 2>/dev/null) || return 1
  [[ $code == 401 ]] && log "ready on 127.0.0.1:$(<"$state_dir/port") (pid $1)"
}

cmd_wait() {
  [[ -f $state_dir/port ]] || die "not started"
  wait_ready 30 0.2 ready
}

cmd_env() {
  our_pid >/dev/null || die "not running"
  echo "export NATTER_TEST_STRIPE_URL=http://127.0.0.1:$(<"$state_dir/port")"
}

case ${1:-} in
  ensure) cmd_ensure ;;
  start) cmd_start ;;
  wait) cmd_wait ;;
  up) cmd_start && cmd_wait ;;
  stop) stop_server 5 ;;
  status) our_pid >/dev/null ;;
  env) cmd_env ;;
  *) usage ;;
esac
