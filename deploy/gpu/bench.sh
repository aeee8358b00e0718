#!/usr/bin/env bash
# The GPU bench of issue 13 (item 8) in one go, about 5 minutes on a GPU host:
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
#   DAE_BENCH_SECONDS     seconds of signal per stream (default 150, dae bench's default)
#   DAE_BENCH_PROCESSES   worker processes of the (b-procs) leg, one bench run each (default "1 4 8";
#                         1 runs the single-process legs only)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
out="${OUT:-$root/runs/gpu-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
py="${DAE_BENCH_PYTHON:-python3}"
venv="${DAE_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/dae/venv-gpu}"
port="${DAE_BENCH_PORT:-29292}"
seconds="${DAE_BENCH_SECONDS:-150}"
reg="${DAE_BENCH_REGISTRY:-$out/registry}"
processes="${DAE_BENCH_PROCESSES:-1 4 8}"

log() { echo "gpu/bench.sh: $*" >&2; }

# 1. Install (reuses the venv and a torch already on the host).
if [[ ! -x "$venv/bin/dae" ]]; then
  log "installing into $venv"
  mkdir -p "$(dirname "$venv")"
  "$py" -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install -q -e "$root" > "$out/pip.log" 2>&1 || { tail -n 20 "$out/pip.log" >&2; exit 1; }
fi
dae="$venv/bin/dae"
"$venv/bin/python" - > "$out/device.txt" <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device: this script measures the GPU path only")
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
    "$dae" kafka stop --port "$port" > /dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
if [[ -z "$bootstrap" ]]; then
  bootstrap="$("$dae" kafka start --port "$port" | tail -n 1)"
  started=1
fi
log "broker: $bootstrap"

# 3. Models: the default model (conv, current) and the seed MLP beside it (a leg of its own).
if [[ ! -f "$reg/CURRENT.json" ]]; then
  log "training the seed MLP and the conv DAE into $reg (small step budgets)"
  "$dae" train --sample-rate 1000 --arch mlp --steps 500 --no-promote --quiet --registry "$reg" > "$out/train.log" 2>&1
  "$dae" train --sample-rate 1000 --arch conv --steps 200 --quiet --registry "$reg" >> "$out/train.log" 2>&1
fi

# 4. The bench, once per process count it supports.
multi=""
bench_help="$(COLUMNS=200 "$dae" bench --help)"
if [[ "$bench_help" == *--processes* ]]; then
  multi=1
fi
for n in $processes; do
  args=(bench --device cuda --bootstrap "$bootstrap" --registry "$reg" --seconds "$seconds"
        --json "$out/bench-cuda-n$n.json")
  if [[ -n "$multi" ]]; then
    args+=(--processes "$n")  # the (b-procs) leg: dae worker --processes N; N=1 skips it
  elif [[ "$n" != 1 ]]; then
    log "skipping N=$n: this dae bench has no --processes option (one worker process per leg)"
    continue
  fi
  log "dae ${args[*]}"
  "$dae" "${args[@]}" 2>&1 | tee "$out/bench-cuda-n$n.log"
done
log "results in $out"
