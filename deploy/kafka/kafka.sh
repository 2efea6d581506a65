#!/usr/bin/env bash
# Run a real single-node Apache Kafka broker (KRaft, broker+controller in one
# JVM, 127.0.0.1 only) for development and tests, from Kafka's own jars on
# Maven Central. No Docker, no Kafka tarball: pom.xml pins the version and
# Maven copies the jars into lib/ once.
#
# Usage: kafka.sh start|stop|status|clean [--name NAME] [--port BROKER_PORT]
#                                         [--controller-port CONTROLLER_PORT]
#
#   start   fetch jars if needed, format storage once, start the broker and
#           wait until it answers a Metadata request (idempotent)
#   stop    SIGTERM the broker this script started, SIGKILL after a grace period
#   status  print running/stopped and whether the broker answers; exit 0 only
#           if running and ready, 3 otherwise
#   clean   stop, then delete the instance's folder (data and logs)
#
# Defaults: --name dev, --port 9092, --controller-port 9093.
# Environment (flags win over it):
#   KAFKA_NAME, KAFKA_PORT, KAFKA_CONTROLLER_PORT  same as the flags
#   KAFKA_HEAP_OPTS       JVM heap flags        (default "-Xms256m -Xmx1g")
#   KAFKA_JVM_OPTS        extra JVM flags       (default none)
#   KAFKA_START_TIMEOUT   seconds to wait for readiness (default 90)
#   KAFKA_STOP_GRACE      seconds between SIGTERM and SIGKILL (default 30)
#
# Ports are only used by `start`; stop/status/clean find an instance by name
# and read its ports from the server.properties it was started with.
set -euo pipefail

# ---------------------------------------------------------------- paths ------
# Everything is resolved from this script's location so it works from any cwd.
KAFKA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$KAFKA_DIR/pom.xml"
LIB_DIR="$KAFKA_DIR/lib"
LIB_STAMP="$LIB_DIR/.stamp"          # sha256 of the pom the jars came from
LIB_LOCK="$KAFKA_DIR/.lib.lock"
LOG4J_CONFIG="$KAFKA_DIR/log4j2.properties"
PROBE="$KAFKA_DIR/probe.py"

HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STOP_GRACE="${KAFKA_STOP_GRACE:-30}"
PROBE_INTERVAL=0.5
PROBE_TRY_TIMEOUT=2

# ---------------------------------------------------------------- helpers ----
log() { echo "kafka.sh[$NAME]: $*"; }
die() { echo "kafka.sh${NAME:+[$NAME]}: error: $*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

now_ms() { date +%s%3N; }
elapsed_s() { # elapsed_s START_MS -> seconds with one decimal
  local ms=$(( $(now_ms) - $1 ))
  printf '%d.%d' $((ms / 1000)) $(((ms % 1000) / 100))
}

# Take an exclusive lock on FILE, held on file descriptor FD until exit.
# The broker is started with these descriptors closed so it never holds them.
lock() { # lock FD FILE
  eval "exec $1>\"\$2\""
  flock "$1"
}

# ---------------------------------------------------------------- jars -------
kafka_version() { # from the jar name, e.g. lib/kafka_2.13-4.4.0.jar -> 4.4.0
  local jar
  for jar in "$LIB_DIR"/kafka_2.13-*.jar; do
    jar="${jar##*/kafka_2.13-}"; echo "${jar%.jar}"; return
  done
}

pom_sha() { sha256sum "$POM" | cut -d' ' -f1; }

lib_is_current() {
  [[ -f "$LIB_STAMP" && "$(cat "$LIB_STAMP")" == "$(pom_sha)" ]] \
    && compgen -G "$LIB_DIR/kafka_*.jar" >/dev/null
}

# Copy the jars with Maven only when lib/ is missing or the pom changed, so a
# cached start needs no network. The copy goes to a temporary folder that
# replaces lib/ only when complete: an interrupted download never leaves a
# half-filled lib/ that looks valid, and jars of an old version do not linger.
ensure_lib() {
  lib_is_current && return 0
  lock 9 "$LIB_LOCK"             # two instances starting at once fetch once
  if lib_is_current; then exec 9>&-; return 0; fi
  command -v mvn >/dev/null || die "mvn not found; it is needed once to fetch the Kafka jars"
  local tmp="$KAFKA_DIR/lib.tmp.$$" t0
  t0=$(now_ms)
  rm -rf "$tmp"
  log "fetching jars listed in pom.xml with Maven into lib/ ..."
  # Maven's output is kept out of the way (even -q prints colour codes) and
  # shown only if it fails.
  if ! mvn -q -B -f "$POM" dependency:copy-dependencies -DoutputDirectory="$tmp" \
      >"$tmp.log" 2>&1; then
    cat "$tmp.log" >&2
    rm -rf "$tmp" "$tmp.log"
    die "mvn dependency:copy-dependencies failed (network? see above)"
  fi
  rm -f "$tmp.log"
  pom_sha >"$tmp/.stamp"
  rm -rf "$LIB_DIR.old"
  [[ -d "$LIB_DIR" ]] && mv "$LIB_DIR" "$LIB_DIR.old"
  mv "$tmp" "$LIB_DIR"
  rm -rf "$LIB_DIR.old"
  exec 9>&-
  local jars=("$LIB_DIR"/*.jar)
  log "jars ready in lib/ (${#jars[@]} jars, $(elapsed_s "$t0") s)"
}

# ---------------------------------------------------------------- instance ---
# Is PID alive and exactly the broker of this instance? Checking the command
# line (java ... kafka.Kafka <this server.properties>) guards against a stale
# pid file whose pid was reused by an unrelated process.
is_our_broker() { # is_our_broker PID
  local pid="$1" args=() a has_main=0 has_props=0
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  # A zombie or vanished process has an empty/unreadable cmdline.
  mapfile -d '' args 2>/dev/null <"/proc/$pid/cmdline" || return 1
  (( ${#args[@]} > 0 )) || return 1
  [[ "$(basename -- "${args[0]}")" == java ]] || return 1
  for a in "${args[@]}"; do
    [[ "$a" == kafka.Kafka ]] && has_main=1
    [[ "$a" == "$PROPS" ]] && has_props=1
  done
  (( has_main && has_props ))
}

read_pid() { if [[ -f "$PID_FILE" ]]; then tr -dc '0-9' <"$PID_FILE"; fi; }

# Pid of this instance's running broker, or nothing.
running_pid() {
  local pid
  pid="$(read_pid)"
  if [[ -n "$pid" ]] && is_our_broker "$pid"; then echo "$pid"; fi
}

# Port recorded in server.properties (what the running broker really uses).
recorded_port() { # recorded_port LISTENER_NAME
  [[ -f "$PROPS" ]] || return 0
  sed -n "s/^listeners=.*$1:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p" "$PROPS"
}

port_in_use() { # port_in_use PORT -> true if something accepts connections
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

probe() { # probe PORT [-v]
  python3 "$PROBE" --port "$1" --timeout "$PROBE_TRY_TIMEOUT" "${@:2}"
}

show_logs() {
  # stdout.log has JVM errors and every WARN+ line; kafka.log adds INFO context.
  local f
  for f in "$RUN_DIR/kafka.log" "$RUN_DIR/stdout.log"; do
    [[ -s "$f" ]] || continue
    echo "----- last lines of $f -----" >&2
    tail -n 30 "$f" >&2
  done
}

write_server_properties() {
  cat >"$PROPS" <<EOF
# Generated by deploy/kafka/kafka.sh on every start; edits are overwritten.
# One KRaft node acting as broker and controller, on 127.0.0.1 only.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$BROKER_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$BROKER_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA_DIR

# A single node can only hold one replica of anything, internal topics included.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Tests create their topics explicitly; a typo must fail, not create a topic.
auto.create.topics.enable=false
num.partitions=1

# Start the first consumer-group rebalance at once instead of after 3 s.
group.initial.rebalance.delay.ms=0
EOF
}

# Format the storage once. Re-formatting would fail (StorageTool refuses an
# already formatted directory unless --ignore-formatted), and data must survive
# restarts, so it only runs while data/meta.properties does not exist yet.
format_storage() {
  [[ -f "$DATA_DIR/meta.properties" ]] && return 0
  local cluster_id
  cluster_id="$(java -cp "$LIB_DIR/*" kafka.tools.StorageTool random-uuid)" \
    || die "kafka.tools.StorageTool random-uuid failed"
  log "formatting storage (cluster id $cluster_id)"
  java -Dlog4j2.configurationFile="$LOG4J_CONFIG" -Dkafka.logs.dir="$RUN_DIR" \
    -cp "$LIB_DIR/*" kafka.tools.StorageTool format -t "$cluster_id" -c "$PROPS" \
    >>"$RUN_DIR/stdout.log" 2>&1 || { show_logs; die "storage format failed"; }
}

# True once PID has fully exited, so its ports are free again. Neither an
# empty command line nor a zombie main thread is enough: the JVM's other
# threads keep the sockets open until the last of them has exited. A process
# that is a zombie with no thread left is done (it may be our own child that
# nobody has reaped yet).
pid_gone() { # pid_gone PID
  local stat tasks
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
  stat="${stat##*) }"            # drop "pid (comm) "; the state comes next
  [[ "${stat%% *}" == Z ]] || return 1
  tasks=("/proc/$1/task/"*)
  (( ${#tasks[@]} <= 1 ))
}

stop_pid() { # stop_pid PID: SIGTERM, wait STOP_GRACE seconds, then SIGKILL
  local pid="$1" deadline
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$(( $(now_ms) + STOP_GRACE * 1000 ))
  while is_our_broker "$pid" && (( $(now_ms) < deadline )); do sleep 0.2; done
  if is_our_broker "$pid"; then
    log "still running after ${STOP_GRACE}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  # Wait (bounded) for the exit to complete; by now the pid is no longer a
  # Kafka process, so it is never signalled again.
  deadline=$(( $(now_ms) + 10000 ))
  until pid_gone "$pid" || (( $(now_ms) > deadline )); do sleep 0.1; done
}

# ---------------------------------------------------------------- commands ---
cmd_start() {
  local t0 pid ready_info i
  t0=$(now_ms)
  [[ "$BROKER_PORT" =~ ^[0-9]+$ && "$CONTROLLER_PORT" =~ ^[0-9]+$ ]] \
    || die "ports must be numbers (got '$BROKER_PORT' and '$CONTROLLER_PORT')"
  [[ "$BROKER_PORT" != "$CONTROLLER_PORT" ]] || die "broker and controller ports must differ"
  command -v java >/dev/null || die "java not found"
  command -v python3 >/dev/null || die "python3 not found (needed by probe.py)"

  mkdir -p "$RUN_DIR"
  lock 8 "$RUN_DIR/.lock"        # serialize start/stop of this one instance
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    log "already running (pid $pid, port $(recorded_port PLAINTEXT))"
    return 0
  fi
  rm -f "$PID_FILE"

  # Fail fast with a clear message instead of a bind error deep in kafka.log.
  for i in "$BROKER_PORT" "$CONTROLLER_PORT"; do
    port_in_use "$i" && die "port $i on 127.0.0.1 is already in use (another broker? try --name/--port/--controller-port)"
  done

  ensure_lib
  mkdir -p "$DATA_DIR"
  : >"$RUN_DIR/stdout.log"
  write_server_properties
  format_storage

  log "starting Kafka $(kafka_version) on 127.0.0.1:$BROKER_PORT (controller $CONTROLLER_PORT)"
  # setsid detaches the broker from this shell's session and terminal so it
  # outlives it and gets no SIGHUP. The inner bash writes its own pid and then
  # execs java, so the pid file holds the java pid whatever setsid does.
  # Lock descriptors 8/9 are closed so the broker never holds our locks.
  # shellcheck disable=SC2086,SC2016  # word lists; $$ expands in the inner bash
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
    java $HEAP_OPTS -XX:+UseG1GC -Djava.awt.headless=true ${KAFKA_JVM_OPTS:-} \
    -Dlog4j2.configurationFile="$LOG4J_CONFIG" -Dkafka.logs.dir="$RUN_DIR" \
    -cp "$LIB_DIR/*" kafka.Kafka "$PROPS" \
    </dev/null >>"$RUN_DIR/stdout.log" 2>&1 8>&- 9>&- &

  for _ in $(seq 50); do [[ -s "$PID_FILE" ]] && break; sleep 0.1; done
  pid="$(read_pid)"
  [[ -n "$pid" ]] || die "broker did not start (no pid file)"

  # Ready = a real Metadata request succeeds, not merely an open port.
  local deadline=$(( t0 + START_TIMEOUT * 1000 ))
  while :; do
    if ! is_our_broker "$pid"; then
      show_logs
      rm -f "$PID_FILE"
      die "broker process $pid exited during start-up (logs above)"
    fi
    if ready_info="$(probe "$BROKER_PORT" -v 2>/dev/null)"; then
      break
    fi
    if (( $(now_ms) > deadline )); then
      show_logs
      log "not ready after ${START_TIMEOUT}s, stopping it"
      stop_pid "$pid"
      rm -f "$PID_FILE"
      die "broker did not become ready within ${START_TIMEOUT}s (KAFKA_START_TIMEOUT)"
    fi
    sleep "$PROBE_INTERVAL"
  done
  log "${ready_info#ready: }"
  log "ready on 127.0.0.1:$BROKER_PORT (pid $pid) after $(elapsed_s "$t0") s"
}

cmd_stop() {
  local pid t0
  t0=$(now_ms)
  [[ -d "$RUN_DIR" ]] || { log "not running (no instance folder)"; return 0; }
  lock 8 "$RUN_DIR/.lock"
  pid="$(read_pid)"
  if [[ -z "$pid" ]]; then
    log "not running"
    return 0
  fi
  if ! is_our_broker "$pid"; then
    log "not running (removing stale pid file for pid $pid)"
    rm -f "$PID_FILE"
    return 0
  fi
  log "stopping pid $pid ..."
  stop_pid "$pid"
  rm -f "$PID_FILE"
  log "stopped after $(elapsed_s "$t0") s"
}

cmd_status() {
  local pid port info
  pid="$(running_pid)"
  if [[ -z "$pid" ]]; then
    log "stopped"
    return 3
  fi
  port="$(recorded_port PLAINTEXT)"
  if info="$(probe "$port" -v 2>&1)"; then
    log "running (pid $pid), ${info}"
    return 0
  fi
  log "running (pid $pid) but NOT ready: ${info#not ready: }"
  return 3
}

cmd_clean() {
  cmd_stop
  rm -rf "$RUN_DIR"
  log "deleted $RUN_DIR"
}

# ---------------------------------------------------------------- main -------
COMMAND="${1:-}"
[[ $# -gt 0 ]] && shift
NAME="${KAFKA_NAME:-dev}"
BROKER_PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) need_value "$@"; NAME="$2"; shift 2 ;;
    --name=*) NAME="${1#*=}"; shift ;;
    --port) need_value "$@"; BROKER_PORT="$2"; shift 2 ;;
    --port=*) BROKER_PORT="${1#*=}"; shift ;;
    --controller-port) need_value "$@"; CONTROLLER_PORT="$2"; shift 2 ;;
    --controller-port=*) CONTROLLER_PORT="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
# The name becomes a folder name: keep it to a safe character set.
[[ "$NAME" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "invalid --name '$NAME' (letters, digits, . _ -)"

RUN_DIR="$KAFKA_DIR/run/$NAME"
PROPS="$RUN_DIR/server.properties"
DATA_DIR="$RUN_DIR/data"
PID_FILE="$RUN_DIR/kafka.pid"

case "$COMMAND" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  clean) cmd_clean ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
