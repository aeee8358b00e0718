#!/usr/bin/env bash
# `make deploy-smoke`: the compose stack's cpu profile really built, started and checked end to end
# on this machine, then taken down. Works without a container registry (images.sh builds every
# image locally; compose.offline.yml points the services at them).
#
# Stages (each prints its time and what it checked):
#   engine    a Docker engine answers, or one is started here (and stopped again at the end)
#   compose   `docker compose` v2 (built from the Go module proxy when missing: compose-plugin.sh)
#   images    the local images (built once, then reused), with their sizes
#   up        `docker compose --profile cpu up -d` as project dae-smoke (its own volumes)
#   kafka     the broker is healthy and kafka-init created the four topics
#   model     model-init trained and published a seed model; the worker is healthy
#   streams   the simulator's streams come out of the worker on dae.clean, every index exactly once
#   metrics   Prometheus scrapes the worker (target up, dae_reconstruction_error has samples) and
#             knows the Alertmanager
#   retrain   the retrain service ran once (promoted or rejected, not failed) and Prometheus saw it
#   again     `down` and `up` on the same volumes: one-shot services are idempotent, all healthy
#   down      every service stops on SIGTERM (none killed); `docker compose down -v` leaves no
#             container, volume or network behind
#
# The run is kept short through compose variables (docker-compose.yml's own knobs):
# SEED_TRAIN_SECONDS=30, SIMULATE_SECONDS=30, RETRAIN_EVERY=60s, RETRAIN_SECONDS=30.
# Host ports the stack publishes must be free: 19092 (Kafka), 9090, 9093. The waits are generous
# (minutes): on a loaded 2-core host the broker alone took 4 min to start; they only bound failures.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
export SEED_TRAIN_SECONDS="${SEED_TRAIN_SECONDS:-30}" SIMULATE_SECONDS="${SIMULATE_SECONDS:-30}"
export SIMULATE_STREAMS="${SIMULATE_STREAMS:-8}" SAMPLE_RATE="${SAMPLE_RATE:-1000}"
export RETRAIN_EVERY="${RETRAIN_EVERY:-60s}" RETRAIN_SECONDS="${RETRAIN_SECONDS:-30}"
export DOCKER_BUILDKIT=0
project=dae-smoke
compose=(docker compose -p "$project" -f docker-compose.yml -f deploy/offline/compose.offline.yml --profile cpu)
t_start=$SECONDS
t_stage=$SECONDS
engine_pid=""
stack_up=0
report=()

exec 3>&2  # fail() reports through fd 3 also from checks whose stderr wait_for discards
say() { echo "smoke: $*"; }
fail() { echo "smoke: FAILED: $*" >&3; exit 1; }
stage_done() {  # stage_done NAME WHAT-WAS-CHECKED
  local line
  line="$(printf '%-8s %5d s  %s' "$1" "$((SECONDS - t_stage))" "$2")"
  report+=("$line")
  echo "smoke: [$line]"
  t_stage=$SECONDS
}
wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll every 2 s until COMMAND succeeds
  local deadline=$((SECONDS + $1)) what="$2"
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "$what (not within the time allowed)"
    sleep 2
  done
}
cid() { "${compose[@]}" ps -a -q "$1"; }
state() { docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$(cid "$1")"; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$(cid "$1")"; }
is_healthy() {  # is_healthy SERVICE (a service that keeps restarting fails the run at once)
  local restarts
  restarts="$(docker inspect -f '{{.RestartCount}}' "$(cid "$1")")"
  ((restarts < 2)) || fail "$1 keeps restarting ($restarts restarts)"
  [[ "$(health "$1")" == healthy ]]
}
exited_ok() { [[ "$(state "$1")" == "exited 0" ]]; }
exited() { [[ "$(state "$1")" == exited* ]]; }
prom() {  # prom PATH: a Prometheus API answer's `data` as JSON
  python3 - "http://localhost:9090/api/v1/$1" <<'PY'
import json, sys, urllib.request
print(json.dumps(json.load(urllib.request.urlopen(sys.argv[1], timeout=5))["data"]))
PY
}
target_up() {  # target_up JOB
  prom targets | python3 -c "import json, sys; t = [t for t in json.load(sys.stdin)['activeTargets']
if t['labels']['job'] == '$1']; sys.exit(0 if t and all(x['health'] == 'up' for x in t) else 1)"
}
kafka_from_host() {
  docker run --rm --network host --entrypoint /opt/kafka/bin/kafka-broker-api-versions.sh \
    dae-offline/kafka:4.1.1 --bootstrap-server localhost:19092
}
alertmanager_known() { prom alertmanagers | grep -q 'alertmanager:9093'; }
retrain_line() { docker logs "$(cid retrain)" 2>&1 | grep -E '^retrain (promoted|rejected|failed)' | head -1; }
retrain_ran() { [[ -n "$(retrain_line)" ]]; }
has_samples() {  # has_samples PROMQL: the instant query returns a value > 0
  prom "query?query=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$1")" \
    | python3 -c "import json, sys; r = json.load(sys.stdin)['result']; sys.exit(0 if r and float(r[0]['value'][1]) > 0 else 1)"
}

cleanup() {
  local rc=$?
  if ((stack_up)); then
    if ((rc != 0)); then
      say "logs of the stack (last 40 lines per service):"
      "${compose[@]}" logs --no-color --tail 40 >&2 || true
    fi
    "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  if [[ -n "$engine_pid" ]]; then
    say "stopping the Docker engine this run started (pid $engine_pid)"
    kill -TERM "$engine_pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$engine_pid" 2>/dev/null || break; sleep 1; done
  fi
  exit "$rc"
}
trap cleanup EXIT

# ------------------------------------------------------------------------------------- engine
if docker info >/dev/null 2>&1; then
  stage_done engine "a Docker engine answers ($(docker version -f '{{.Server.Version}}'))"
else
  command -v dockerd >/dev/null || fail "no Docker engine answers and dockerd is not installed (apt-get install docker.io)"
  [[ "$(id -u)" == 0 ]] || fail "no Docker engine answers, and starting one needs root"
  say "no Docker engine answers: starting dockerd (log: /tmp/dae-smoke-dockerd.log)"
  dockerd --storage-driver=overlay2 >/tmp/dae-smoke-dockerd.log 2>&1 &
  engine_pid=$!
  wait_for 60 "the Docker engine this run started answers" docker info
  stage_done engine "started dockerd $(docker version -f '{{.Server.Version}}') (pid $engine_pid)"
fi

# ------------------------------------------------------------------------------------ compose
deploy/offline/compose-plugin.sh 2>&1 | sed 's/^/  /'
[[ "${PIPESTATUS[0]}" == 0 ]] || fail "no docker compose"
stage_done compose "$(docker compose version --short)"

# ------------------------------------------------------------------------------------- images
deploy/offline/images.sh 2>&1 | sed 's/^/  /'
[[ "${PIPESTATUS[0]}" == 0 ]] || fail "images"
images_mb="$(docker image ls --format '{{.Repository}}:{{.Tag}} {{.ID}}' | grep -E '^(dae-offline/|dae-stream:cpu)' \
  | awk '{print $2}' | sort -u | xargs docker image inspect -f '{{.Size}}' | awk '{s += $1} END {printf "%.0f", s / 1e6}')"
stage_done images "dae-stream:cpu $(docker image inspect -f '{{.Size}}' dae-stream:cpu | awk '{printf "%.2f GB", $1 / 1e9}'), all local images ${images_mb} MB"

# ----------------------------------------------------------------------------------------- up
for port in 19092 9090 9093; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then fail "host port $port is taken (the stack publishes it)"; fi
done
"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true  # leftovers of an interrupted run
volumes_before="$(docker volume ls -q | sort)"
stack_up=1
"${compose[@]}" up -d 2>&1 | sed 's/^/  /'
[[ "${PIPESTATUS[0]}" == 0 ]] || fail "docker compose up"
stage_done up "$("${compose[@]}" ps -a --format '{{.Service}}' | sort | tr '\n' ' ')"

# -------------------------------------------------------------------------------------- kafka
wait_for 300 "kafka healthy" is_healthy kafka
wait_for 300 "kafka-init done" exited kafka-init
exited_ok kafka-init || fail "kafka-init: $(state kafka-init)"
topics="$("${compose[@]}" logs --no-color kafka-init | grep -c 'PartitionCount' || true)"
[[ "$topics" == 4 ]] || fail "kafka-init described $topics topics, not 4"
# The listener the host uses (localhost:19092, advertised as such), from the host's network.
wait_for 180 "Kafka answers on localhost:19092 from the host" kafka_from_host
stage_done kafka "broker healthy, 4 topics created, answers on localhost:19092 from the host"

# -------------------------------------------------------------------------------------- model
wait_for $((SEED_TRAIN_SECONDS + 600)) "model-init done" exited model-init
exited_ok model-init || fail "model-init: $(state model-init)"
current="$("${compose[@]}" exec -T retrain dae models show current | python3 -c \
  'import json, sys; m = json.load(sys.stdin); print(m["version"], m.get("arch", "?"))')" || fail "no current model"
wait_for 600 "dae-worker-cpu healthy" is_healthy dae-worker-cpu
stage_done model "seed model $current published; worker healthy (/metrics)"

# ------------------------------------------------------------------------------------ streams
wait_for $((SIMULATE_SECONDS + 600)) "simulator done" exited simulator
exited_ok simulator || fail "simulator: $(state simulator)"
expected=$((SIMULATE_SECONDS * SAMPLE_RATE))
capture="$("${compose[@]}" run --rm --no-deps -T --entrypoint dae simulator \
  capture --out /tmp/captured --idle-s 20 --max-seconds 600 2>/dev/null)" || { echo "$capture" >&2; fail "capture"; }
echo "$capture" | sed 's/^/  /'
whole="$(echo "$capture" | grep -cE ": $expected frames x [0-9]+ ch from index 0, 0 gap\(s\) \(0 samples missing\), 0 duplicate\(s\)" || true)"
[[ "$whole" == "$SIMULATE_STREAMS" ]] || fail "$whole of $SIMULATE_STREAMS streams came out whole ($expected samples from index 0, no gap, no duplicate)"
stage_done streams "$SIMULATE_STREAMS streams x $expected samples on dae.clean, every index once"

# ------------------------------------------------------------------------------------ metrics
wait_for 300 "Prometheus target dae-worker up" target_up dae-worker
wait_for 300 "dae_reconstruction_error has samples" has_samples 'sum(dae_reconstruction_error_count{job="dae-worker"})'
wait_for 60 "Prometheus knows the Alertmanager" alertmanager_known
stage_done metrics "target dae-worker up, dae_reconstruction_error_count > 0, alertmanager:9093 active"

# ------------------------------------------------------------------------------------ retrain
wait_for $((RETRAIN_SECONDS + 900)) "a retrain run" retrain_ran
run_line="$(retrain_line)"
say "$run_line"
[[ "$run_line" != "retrain failed"* ]] || fail "the retrain run failed"
wait_for 300 "Prometheus saw the run" has_samples 'sum(dae_retrain_runs_total{job="dae-retrain"})'
stage_done retrain "${run_line%%:*}; dae_retrain_runs_total > 0 in Prometheus"

# -------------------------------------------------------------------------------------- again
# A second `up` on the same volumes: the one-shot services are idempotent (topics exist, the
# registry has a model), the broker restarts on its formatted data, the worker resumes.
"${compose[@]}" down 2>&1 | sed 's/^/  /'
"${compose[@]}" up -d 2>&1 | sed 's/^/  /'
[[ "${PIPESTATUS[0]}" == 0 ]] || fail "the second docker compose up"
wait_for 300 "kafka healthy again" is_healthy kafka
wait_for 300 "kafka-init done again" exited kafka-init
exited_ok kafka-init || fail "kafka-init on existing topics: $(state kafka-init)"
wait_for 300 "model-init done again" exited model-init
exited_ok model-init || fail "model-init on a registry with a model: $(state model-init)"
"${compose[@]}" logs --no-color model-init | grep -q "registry has a current model" \
  || fail "model-init trained again instead of keeping the registry's model"
wait_for 600 "dae-worker-cpu healthy again" is_healthy dae-worker-cpu
stage_done again "second up on the same volumes: topics kept, seed model kept, worker healthy"

# --------------------------------------------------------------------------------------- down
disk="$(docker system df --format '{{.Type}} {{.Size}}' | tr '\n' ',' | sed 's/,$//; s/,/, /g')"
# Every service stops on SIGTERM within its grace period; none had to be killed (exit 137).
t_stop=$SECONDS
"${compose[@]}" stop 2>&1 | sed 's/^/  /'
stop_s=$((SECONDS - t_stop))
killed="$("${compose[@]}" ps -a --format '{{.Service}} {{.ExitCode}}' | awk '$2 == 137 {print $1}' | tr '\n' ' ')"
[[ -z "$killed" ]] || fail "killed after the stop timeout instead of stopping on SIGTERM: $killed"
"${compose[@]}" down -v --remove-orphans 2>&1 | sed 's/^/  /'
stack_up=0
left="$(docker ps -aq --filter "label=com.docker.compose.project=$project" | wc -l)"
nets="$(docker network ls -q --filter "label=com.docker.compose.project=$project" | wc -l)"
vols="$(comm -13 <(echo "$volumes_before") <(docker volume ls -q | sort) | wc -l)"  # anonymous ones too
((left + vols + nets == 0)) || fail "after down: $left container(s), $vols volume(s), $nets network(s) left"
stage_done down "all stopped on SIGTERM in ${stop_s} s; no container, volume or network left"

trap - EXIT
cleanup_engine=""
if [[ -n "$engine_pid" ]]; then
  kill -TERM "$engine_pid"
  for _ in $(seq 1 30); do kill -0 "$engine_pid" 2>/dev/null || break; sleep 1; done
  ! kill -0 "$engine_pid" 2>/dev/null || fail "the Docker engine this run started did not stop"
  cleanup_engine=" (the engine this run started is stopped)"
fi
echo
echo "smoke: PASSED in $((SECONDS - t_start)) s$cleanup_engine"
printf '  %s\n' "${report[@]}"
echo "  disk used by the engine: $disk"
