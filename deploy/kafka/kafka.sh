#!/usr/bin/env bash
# Single-node Apache Kafka 4.x (KRaft, combined broker+controller) built from Maven Central jars.
#
#   deploy/kafka/kafka.sh start [PORT]   start (idempotent), wait until it answers, print bootstrap
#   deploy/kafka/kafka.sh stop  [PORT]   stop cleanly (SIGTERM, then SIGKILL after a grace period)
#   deploy/kafka/kafka.sh status [PORT]  exit 0 and print bootstrap when running
#   deploy/kafka/kafka.sh resolve        fetch the jars into the cache only (deploy/gpu/offline-kit.sh)
#
# Environment:
#   DAE_KAFKA_PORT    broker port (default 19092; the controller listens on PORT+1)
#   DAE_KAFKA_HOME    jar cache (default ~/.cache/dae/kafka-<version>); resolved once with Maven
#   DAE_KAFKA_DATA    data/log directory (default ${TMPDIR:-/tmp}/dae-kafka-<port>)
#   DAE_KAFKA_HEAP    JVM heap (default 1g)
#   DAE_KAFKA_START_TIMEOUT_S  seconds to wait for the broker to start (default 300: on a loaded
#                     2-core machine KRaft's controller registration alone has taken 150 s)
#   DAE_KAFKA_SASL    "scram": add a SASL_PLAINTEXT listener with SCRAM-SHA-256 and SCRAM-SHA-512 on
#                     PORT+2 (print that address), with the user DAE_KAFKA_SASL_USER (default dae)
#                     / DAE_KAFKA_SASL_PASSWORD (default dae-secret) created at format time.
#                     Only applies to a fresh data directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
cmd="${1:-status}"
port="${2:-${DAE_KAFKA_PORT:-19092}}"
cport=$((port + 1))
home="${DAE_KAFKA_HOME:-$HOME/.cache/dae/kafka-$version}"
data="${DAE_KAFKA_DATA:-${TMPDIR:-/tmp}/dae-kafka-$port}"
pidfile="$data/kafka.pid"
logfile="$data/kafka.out"
sasl="${DAE_KAFKA_SASL:-}"
sport=$((port + 2))
bootstrap="127.0.0.1:$port"
[[ "$sasl" == "scram" ]] && bootstrap="127.0.0.1:$sport"

log() { echo "kafka.sh: $*" >&2; }

running() {
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

resolve_jars() {
  if [[ -f "$home/.complete" ]]; then return; fi
  command -v mvn >/dev/null || { log "Maven (mvn) is required to fetch Kafka $version jars"; exit 1; }
  command -v java >/dev/null || { log "Java 17+ is required to run Kafka"; exit 1; }
  log "resolving Kafka $version jars from Maven Central into $home/libs (once)"
  mkdir -p "$home"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$home/libs" -DincludeScope=runtime >&2
  touch "$home/.complete"
}

write_config() {
  mkdir -p "$data/logs"
  local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
  local advertised="PLAINTEXT://127.0.0.1:$port"
  local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  local sasl_props=""
  if [[ "$sasl" == "scram" ]]; then
    listeners="$listeners,SASL_PLAINTEXT://127.0.0.1:$sport"
    advertised="$advertised,SASL_PLAINTEXT://127.0.0.1:$sport"
    protocols="$protocols,SASL_PLAINTEXT:SASL_PLAINTEXT"
    sasl_props="sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
  fi
  cat > "$data/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
$sasl_props
log.dirs=$data/logs
num.partitions=4
auto.create.topics.enable=true
# One node: every internal topic has a single replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests and demos join groups often: do not wait 3 s for more members before the first rebalance.
group.initial.rebalance.delay.ms=0
# Commit metadata carries per-stream resume points: allow more than the 4 KiB default.
offset.metadata.max.bytes=65536
# Chunks of up to 8 MiB per message (the codec's default limit is lower).
message.max.bytes=8388608
log.retention.hours=24
log.segment.bytes=268435456
PROPS
}

start() {
  if running; then
    echo "$bootstrap"; return
  fi
  if port_open "$port"; then
    log "port $port is already in use by another process"; exit 1
  fi
  resolve_jars
  write_config
  local cp="$home/libs/*"
  local jvm=(java -Xms256m "-Xmx${DAE_KAFKA_HEAP:-1g}" -XX:+UseG1GC -Djava.awt.headless=true
             "-Dlog4j2.configurationFile=$here/log4j2.properties" -cp "$cp")
  if [[ ! -f "$data/logs/meta.properties" ]]; then
    local cid
    cid="$("${jvm[@]}" kafka.tools.StorageTool random-uuid)"
    local scram=()
    if [[ "$sasl" == "scram" ]]; then
      local user="${DAE_KAFKA_SASL_USER:-dae}" pw="${DAE_KAFKA_SASL_PASSWORD:-dae-secret}"
      scram=(--add-scram "SCRAM-SHA-256=[name=$user,password=$pw]" --add-scram "SCRAM-SHA-512=[name=$user,password=$pw]")
    fi
    "${jvm[@]}" kafka.tools.StorageTool format -t "$cid" -c "$data/server.properties" "${scram[@]}" >&2
  fi
  nohup setsid "${jvm[@]}" kafka.Kafka "$data/server.properties" >"$logfile" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  # Wait for the broker to register and open its client listener (KRaft start takes a few seconds).
  local wait_s="${DAE_KAFKA_START_TIMEOUT_S:-300}"
  for _ in $(seq 1 $((wait_s * 2))); do
    if ! running; then log "broker exited during start; last lines of $logfile:"; tail -20 "$logfile" >&2; exit 1; fi
    if grep -q "Kafka Server started" "$logfile" 2>/dev/null && port_open "$port"; then
      echo "$bootstrap"; return
    fi
    sleep 0.5
  done
  log "broker did not start within $wait_s s (DAE_KAFKA_START_TIMEOUT_S); see $logfile"; exit 1
}

stop() {
  if ! running; then log "not running on port $port"; return; fi
  local pid; pid="$(cat "$pidfile")"
  kill -TERM "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; log "stopped"; return; }
    sleep 0.5
  done
  log "broker did not stop in 30 s; killing"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "$bootstrap"; else exit 3; fi ;;
  clean) stop; rm -rf "$data" ;;
  resolve) resolve_jars ;;
  *) echo "usage: $0 start|stop|status|clean|resolve [PORT]" >&2; exit 2 ;;
esac
