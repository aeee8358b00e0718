#!/usr/bin/env bash
# The GPU bench of issue 13 (item 8) in one go (445 s on a 16-core H200 host, docs/bench.md):
# install the repo, start the local broker, train the two models with small step budgets (their
# throughput, not their quality, is measured), run `dae bench --device cuda`, write the JSON.
#
#   deploy/gpu/bench.sh            # from anywhere; the repo is this script's ../..
#
# Environment (all optional):
#   OUT                   where the JSON and logs go (default: runs/gpu-<UTC time>)
#   DAE_BENCH_PYTHON      interpreter for the venv (default python3); the venv sees its site
#                         packages, so a CUDA torch already installed there is used as is
#   DAE_BENCH_VENV        venv directory (default ~/.cache/dae/venv-gpu; reused when it exists)
#   DAE_BENCH_BOOTSTRAP   use this broker instead of starting the local one
#   DAE_BENCH_PORT        port of the local broker (default 29292)
#   DAE_BENCH_REGISTRY    registry to bench (default: a fresh one under OUT, trained here)
#   DAE_BENCH_SECONDS     seconds of signal per stream (default 400: with 32 streams, 12.8 M samples,
#                         enough to time a GPU worker; dae bench's own default is 150 x 8 streams)
#   DAE_BENCH_PROCESSES   worker processes of the (b-procs) leg, one bench run each (default "4 8";
#                         1 runs the single-process legs only); also the process counts of the
#                         engine-only run sharing the GPU
#   DAE_BENCH_DEVICE      cuda (default); cpu runs every step here without a GPU (a dry run of the
#                         script itself, with a small DAE_BENCH_SECONDS)
#   DAE_BENCH_ENGINE=0    skip the engine-only rates (step 4)
#   DAE_BENCH_STREAMS     streams in the bench input (default 32)
#   DAE_BENCH_LIVE_RATE   input rate of the latency phase, samples/s (default 2000000: at dae bench's
#                         200000 the latency phase of 12.8 M samples would take a minute per leg)
#   DAE_KAFKA__PARTITIONS partitions of the bench topics (default here 16, so that 8 processes share them)
#   DAE_BENCH_KIT         a kit.tar.xz of deploy/gpu/offline-kit.sh (a JRE and the broker's jars),
#                         for a host without a JDK or network
#   DAE_BENCH_WHEELS      a folder of wheels (offline-kit.sh): install with --no-index from there
#   DAE_BENCH_VENV=-      no venv: install the wheels into a folder on PYTHONPATH and run the
#                         repo with DAE_BENCH_PYTHON itself (an image whose python3 is a venv
#                         holding CUDA torch, where a nested venv would not see it)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
out="${OUT:-$root/runs/gpu-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
py="${DAE_BENCH_PYTHON:-python3}"
venv="${DAE_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/dae/venv-gpu}"
port="${DAE_BENCH_PORT:-29292}"
seconds="${DAE_BENCH_SECONDS:-400}"
reg="${DAE_BENCH_REGISTRY:-$out/registry}"
processes="${DAE_BENCH_PROCESSES:-4 8}"
streams="${DAE_BENCH_STREAMS:-32}"
live_rate="${DAE_BENCH_LIVE_RATE:-2000000}"
export DAE_KAFKA__PARTITIONS="${DAE_KAFKA__PARTITIONS:-16}"
device="${DAE_BENCH_DEVICE:-cuda}"

log() { echo "gpu/bench.sh: $*" >&2; }

# 1. Install (reuses the venv and a torch already on the host).
wheels="${DAE_BENCH_WHEELS:-}"
pip_src=()
if [[ -n "$wheels" ]]; then
  pip_src=(--no-index --find-links "$wheels" --no-build-isolation)
fi
if [[ "$venv" == "-" ]]; then
  site="$out/site"
  mkdir -p "$site"
  if [[ -n "$wheels" ]]; then  # else the interpreter is taken to have the dependencies already
    log "installing the wheels into $site (no venv)"
    "$py" -m pip install -q --no-deps --no-compile --target "$site" "$wheels"/*.whl > "$out/pip.log" 2>&1 \
      || { tail -n 20 "$out/pip.log" >&2; exit 1; }
  fi
  export PYTHONPATH="$root:$site${PYTHONPATH:+:$PYTHONPATH}"
  python="$py"
  dae_cmd=("$py" -m pipeline.cli.app)
else
  if [[ ! -x "$venv/bin/dae" ]]; then
    log "installing into $venv"
    mkdir -p "$(dirname "$venv")"
    "$py" -m venv --system-site-packages "$venv"
    "$venv/bin/pip" install -q "${pip_src[@]}" -e "$root" > "$out/pip.log" 2>&1 \
      || { tail -n 20 "$out/pip.log" >&2; exit 1; }
  fi
  python="$venv/bin/python"
  dae_cmd=("$venv/bin/dae")
fi
dae() { "${dae_cmd[@]}" "$@"; }

# A JRE and the broker's jars from a kit, for a host without them.
if [[ -n "${DAE_BENCH_KIT:-}" ]]; then
  kitdir="$out/kit"
  mkdir -p "$kitdir"
  xz -dc "$DAE_BENCH_KIT" | tar -C "$kitdir" -xf -
  export PATH="$kitdir/jre/bin:$PATH"
  DAE_KAFKA_HOME="$(echo "$kitdir"/kafka-*)"
  export DAE_KAFKA_HOME
  log "kit: $(java -version 2>&1 | head -n 1), jars in $DAE_KAFKA_HOME"
fi
"$python" - "$device" > "$out/device.txt" <<'PY'
import sys

import torch

if sys.argv[1] == "cpu":
    print(torch.__version__, "cpu (dry run)", torch.get_num_threads(), "threads")
    sys.exit(0)
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device: this script measures the GPU path only (DAE_BENCH_DEVICE=cpu for a dry run)")
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.device_count(), "device(s)")
PY
log "device: $(cat "$out/device.txt")"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
fi

# 2. Broker: the local single-node one (stopped at the end) unless one is given.
bootstrap="${DAE_BENCH_BOOTSTRAP:-}"
started=""
cleanup() {
  if [[ -n "$started" ]]; then
    dae kafka stop --port "$port" > /dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
if [[ -z "$bootstrap" ]]; then
  bootstrap="$(dae kafka start --port "$port" | tail -n 1)"
  started=1
fi
log "broker: $bootstrap"

# 3. Models: the default model (conv, current) and the seed MLP beside it (a leg of its own).
if [[ ! -f "$reg/CURRENT.json" ]]; then
  log "training the seed MLP and the conv DAE into $reg (small step budgets)"
  dae train --sample-rate 1000 --arch mlp --steps 500 --no-promote --quiet --registry "$reg" > "$out/train.log" 2>&1
  dae train --sample-rate 1000 --arch conv --steps 200 --quiet --registry "$reg" >> "$out/train.log" 2>&1
fi

# 4. What the device serves without Kafka: the worker's engine path and the bare forward pass, per
#    model and micro-batch size, and N processes sharing the GPU (pipeline/tools/engine_rate.py).
if [[ "${DAE_BENCH_ENGINE:-1}" != 0 ]]; then
  current="$("$python" -c 'import sys; from models.registry import ModelRegistry; print(ModelRegistry(sys.argv[1]).current() or "")' "$reg")"
  seed="$("$python" -c 'import sys; from pathlib import Path; from pipeline.tools.bench import seed_mlp_version; print(seed_mlp_version(Path(sys.argv[1]), 1000.0) or "")' "$reg")"
  procs_list="$(echo "$processes" | tr ' ' '\n' | awk '$1 > 1' | paste -sd, -)"
  log "engine rates: seed MLP ${seed:-none}, current ${current:-none}, processes ${procs_list:-none}"
  "$python" -m pipeline.tools.engine_rate --registry "$reg" --versions "$seed,$current" --device "$device" \
    --procs "$procs_list" --json "$out/engine-$device.json" 2>&1 | tee "$out/engine-$device.log"
fi

# 5. The bench, once per process count it supports.
multi=""
bench_help="$(COLUMNS=200 dae bench --help)"
if [[ "$bench_help" == *--processes* ]]; then
  multi=1
fi
for n in $processes; do
  args=(bench --device "$device" --bootstrap "$bootstrap" --registry "$reg" --seconds "$seconds"
        --streams "$streams" --live-rate "$live_rate" --json "$out/bench-$device-n$n.json")
  if [[ -n "$multi" ]]; then
    args+=(--processes "$n")  # the (b-procs) leg: dae worker --processes N; N=1 skips it
  elif [[ "$n" != 1 ]]; then
    log "skipping N=$n: this dae bench has no --processes option (one worker process per leg)"
    continue
  fi
  log "dae ${args[*]}"
  dae "${args[@]}" 2>&1 | tee "$out/bench-$device-n$n.log"
done
log "results in $out"
