#!/usr/bin/env bash
# A throwaway single-node Cassandra 5.0 on loopback, standing in for ScyllaDB
# in tests (same CQL protocol; no ScyllaDB packages exist in our registries).
# Cassandra's jars come from Maven Central; no tarball or Docker is needed.
#
# Usage: scripts/infra/cassandra.sh <command>
#   ensure   make sure Java 11/17 and the Cassandra jars exist (cached)
#   start    start the node in the background (no-op if ours is running)
#   wait     block until CQL answers a query (deadline)
#   up       start + wait
#   stop     stop it (SIGTERM, then SIGKILL) and delete its data
#   status   exit 0 if ours is running
#   env      print the NATTER_TEST_CQL* export lines
#   probe    run one CQL query against the node; print release_version
#
# Environment:
#   NATTER_INFRA_DIR                runtime state (default: <repo>/target/infra)
#   NATTER_CQL_PORT                 CQL port; unset = 9042 if free, else a free one
#   NATTER_CASSANDRA_STORAGE_PORT   internode port; unset = 7000 if free, else free
#   NATTER_CASSANDRA_VERSION        wanted version (default 5.0.8); if Maven
#                                   Central lacks it, the newest 5.0.x is used
#   NATTER_CASSANDRA_HEAP           -Xms/-Xmx (default 1g)
#   NATTER_CASSANDRA_TIMEOUT        readiness deadline in seconds (default 180)
#   NATTER_CASSANDRA_JAVA           java binary to use (must be 11 or 17)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
support=$here/cassandra
infra_dir=${NATTER_INFRA_DIR:-$repo_root/target/infra}
state_dir=$infra_dir/cassandra
log_file=$infra_dir/logs/cassandra.log
cache_dir=${XDG_CACHE_HOME:-$HOME/.cache}/natter
want_version=${NATTER_CASSANDRA_VERSION:-5.0.8}
heap=${NATTER_CASSANDRA_HEAP:-1g}
timeout_s=${NATTER_CASSANDRA_TIMEOUT:-180}
datacenter=datacenter1 # what SimpleSnitch reports; see cassandra/cassandra.yaml

name=cassandra
# shellcheck source=common.sh
source "$here/common.sh"

java_major() { "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1; }

# Cassandra 5.0 runs on Java 11 and 17 only (not 21/25, which may be the
# default java on some machines), so look for a 17 explicitly.
find_java() {
  local j m
  if [[ -n ${NATTER_CASSANDRA_JAVA:-} ]]; then
    m=$(java_major "$NATTER_CASSANDRA_JAVA" || true)
    [[ $m == 17 || $m == 11 ]] || die "NATTER_CASSANDRA_JAVA=$NATTER_CASSANDRA_JAVA is not Java 11 or 17"
    echo "$NATTER_CASSANDRA_JAVA"; return
  fi
  for j in "${JAVA_HOME:+$JAVA_HOME/bin/java}" \
    /usr/lib/jvm/java-17-openjdk-*/bin/java "$(command -v java || true)" \
    /usr/lib/jvm/java-11-openjdk-*/bin/java; do
    [[ -n $j && -x $j ]] || continue
    m=$(java_major "$j")
    if [[ $m == 17 || $m == 11 ]]; then echo "$j"; return; fi
  done
  log "installing openjdk-17-jre-headless"
  apt_install openjdk-17-jre-headless || die "cannot install openjdk-17-jre-headless (needs root and apt-get)"
  for j in /usr/lib/jvm/java-17-openjdk-*/bin/java; do
    [[ -x $j ]] && { echo "$j"; return; }
  done
  die "no Java 17 after installing openjdk-17-jre-headless"
}

lib_dir_for() { echo "$cache_dir/cassandra-$1/lib"; }
is_complete() { [[ -f $cache_dir/cassandra-$1/.complete ]]; }

# Resolve cassandra-all (a Maven version or range) and its runtime
# dependencies into a temporary dir, then move it into place under the
# version that Maven actually picked. Prints that version.
download() {
  local spec=$1 tmp got
  command -v mvn >/dev/null || { log "installing maven"; apt_install maven || die "cannot install maven (needs root and apt-get)"; }
  mkdir -p "$cache_dir"
  tmp=$(mktemp -d "$cache_dir/.cassandra-download.XXXXXX")
  log "downloading cassandra-all $spec and dependencies from Maven Central"
  if ! mvn -B -q -Dstyle.color=never -f "$support/pom.xml" -Dcassandra.version="$spec" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp/lib" \
    >"$tmp/mvn.log" 2>&1; then
    tail -n 20 "$tmp/mvn.log" >&2
    rm -rf "$tmp"
    return 1
  fi
  got=$(find "$tmp/lib" -maxdepth 1 -name 'cassandra-all-*.jar' -printf '%f\n' | sed 's/^cassandra-all-\(.*\)\.jar$/\1/')
  [[ -n $got ]] || { rm -rf "$tmp"; die "Maven resolved no cassandra-all jar"; }
  rm -rf "$cache_dir/cassandra-$got"
  mkdir -p "$cache_dir/cassandra-$got"
  mv "$tmp/lib" "$(lib_dir_for "$got")"
  rm -rf "$tmp"
  # Marker written last: an interrupted download is never mistaken for a cache.
  touch "$cache_dir/cassandra-$got/.complete"
  echo "$got"
}

# Prints the version whose jars are ready to use.
ensure_jars() {
  local v
  if is_complete "$want_version"; then echo "$want_version"; return; fi
  if v=$(download "$want_version"); then echo "$v"; return; fi
  # Requested version not served: reuse any cached 5.0.x, else ask Maven for
  # the newest 5.0.x (the upper bound keeps 5.1 pre-releases out).
  v=$(find "$cache_dir" -maxdepth 2 -path '*/cassandra-5.0.*/.complete' 2>/dev/null \
    | sed 's|.*/cassandra-\([^/]*\)/.complete|\1|' | sort -V | tail -n1)
  if [[ -n $v ]]; then log "using cached $v instead of $want_version"; echo "$v"; return; fi
  log "cassandra-all $want_version not available; trying newest 5.0.x"
  download '[5.0.0,5.0.999]' || die "could not download any cassandra-all 5.0.x"
}

# A real CQL exchange over bash's /dev/tcp (no cqlsh or driver needed):
# protocol v4 STARTUP must get READY, then a QUERY must get a RESULT.
# Prints the server's release_version.
cql_probe() {
  local port=$1
  (
    exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
    # STARTUP, stream 1, body {"CQL_VERSION": "3.0.0"} (22 bytes).
    printf '\x04\x00\x00\x01\x01\x00\x00\x00\x16\x00\x01\x00\x0bCQL_VERSION\x00\x053.0.0' >&3
    [[ $(timeout 5 head -c 9 <&3 | od -An -tx1 | tr -d ' \n') == 840000010200000000 ]] || exit 1
    # QUERY, stream 2: 40-byte query string, consistency ONE, no flags.
    printf '\x04\x00\x00\x02\x07\x00\x00\x00\x2f\x00\x00\x00\x28%s\x00\x01\x00' \
      'SELECT release_version FROM system.local' >&3
    local hdr len
    hdr=$(timeout 5 head -c 9 <&3 | od -An -tx1 | tr -d ' \n')
    [[ $hdr == 8400000208* ]] || exit 1 # opcode 0x08 = RESULT (0x00 = ERROR)
    len=$((16#${hdr:10:8}))
    timeout 5 head -c "$len" <&3 | tr -c '0-9.' ' ' | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1
  )
}

# --- commands ---

cmd_ensure() {
  local v java
  java=$(find_java)
  v=$(ensure_jars)
  log "Cassandra $v jars in $(lib_dir_for "$v"); java $java (Java $(java_major "$java"))"
}

cmd_start() {
  local pid java v lib jamm cql_port storage_port
  if pid=$(our_pid); then
    log "already running (pid $pid) on CQL port $(<"$state_dir/cql_port")"
    return 0
  fi
  java=$(find_java)
  v=$(ensure_jars)
  lib=$(lib_dir_for "$v")
  jamm=$(find "$lib" -maxdepth 1 -name 'jamm-*.jar' | head -n1)
  [[ -n $jamm ]] || die "no jamm jar in $lib"

  # Stale state from a crashed or killed run: start from an empty node.
  rm -rf "$state_dir"
  mkdir -p "$state_dir"/{data,commitlog,saved_caches,hints,cdc_raw,triggers} "$(dirname "$log_file")"
  cql_port=${NATTER_CQL_PORT:-$(pick_port 9042)}
  storage_port=${NATTER_CASSANDRA_STORAGE_PORT:-$(pick_port 7000)}
  port_in_use "$cql_port" && die "CQL port $cql_port is already in use (set NATTER_CQL_PORT)"
  port_in_use "$storage_port" && die "storage port $storage_port is already in use (set NATTER_CASSANDRA_STORAGE_PORT)"
  sed -e "s|@STATE_DIR@|$state_dir|g" -e "s|@CQL_PORT@|$cql_port|g" \
    -e "s|@STORAGE_PORT@|$storage_port|g" "$support/cassandra.yaml" >"$state_dir/cassandra.yaml"
  echo "$cql_port" >"$state_dir/cql_port"
  echo "$v" >"$state_dir/version"
  date +%s >"$state_dir/started_at"

  log "starting Cassandra $v on 127.0.0.1:$cql_port (storage $storage_port, heap $heap), log $log_file"
  # cd: the JVM drops hs_err/heap dump files into its working directory.
  # setsid: own session, so a Ctrl-C in the caller's terminal does not kill
  # it and `scripts/test up` can leave it running after the shell exits.
  (
    cd "$state_dir"
    exec setsid "$java" "@$support/jvm17.options" \
      "-Xms$heap" "-Xmx$heap" \
      "-javaagent:$jamm" \
      "-Dcassandra.config=file://$state_dir/cassandra.yaml" \
      "-Dcassandra.storagedir=$state_dir" \
      "-Dcassandra.triggers_dir=$state_dir/triggers" \
      "-Dcassandra.logdir=$infra_dir/logs" \
      "-Dcassandra-foreground=yes" \
      "-Dlogback.configurationFile=$support/logback.xml" \
      -cp "$lib/*" org.apache.cassandra.service.CassandraDaemon
  ) </dev/null >"$log_file" 2>&1 &
  echo $! >"$state_dir/pid"
  wait_exec
}

# The CQL port opens as the last startup step; the probe then proves that
# queries really work.
cql_ready() {
  local port version
  port=$(<"$state_dir/cql_port")
  port_in_use "$port" && version=$(cql_probe "$port") && [[ -n $version ]] \
    && log "ready: Cassandra $version answers CQL on 127.0.0.1:$port" \
      "(pid $1, $(($(date +%s) - $(<"$state_dir/started_at")))s after start)"
}

cmd_wait() {
  [[ -f $state_dir/cql_port ]] || die "not started"
  wait_ready "$timeout_s" 1 cql_ready
}

cmd_env() {
  our_pid >/dev/null || die "not running"
  echo "export NATTER_TEST_CQL=127.0.0.1:$(<"$state_dir/cql_port")"
  echo "export NATTER_TEST_CQL_DC=$datacenter"
}

cmd_probe() {
  our_pid >/dev/null || die "not running"
  cql_probe "$(<"$state_dir/cql_port")" || die "CQL probe failed"
}

case ${1:-} in
  ensure) cmd_ensure ;;
  start) cmd_start ;;
  wait) cmd_wait ;;
  up) cmd_start && cmd_wait ;;
  # SIGTERM runs Cassandra's drain hook; test data needs no drain.
  stop) stop_server 30 ;;
  status) our_pid >/dev/null ;;
  env) cmd_env ;;
  probe) cmd_probe ;;
  *) usage ;;
esac
