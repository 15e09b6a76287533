#!/usr/bin/env bash
# Prepared GPU check (issue 10), at most 8 minutes on one GPU; prints one table at the end.
#   bash benchmarks/gpu_check.sh            (from the repository root, project venv active)
# PYTHON names the interpreter (default: python, else python3: the lent GPU machines' image has only
# python3, with torch, transformers, pytest, pytest-benchmark and pytest-xdist; the repository is put
# on PYTHONPATH, so nothing needs installing there).
# Steps: CUDA-vs-CPU capture and attention checks, the capture benchmark on GPT-2-small and
# mamba-130m shapes in bf16 and fp32 (ratios vs a plain forward), the OOM back-off, and the
# default suite on the built-in models with --device cuda. Each step has its own time limit.
set -u
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MPLBACKEND=Agg PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-$(command -v python || command -v python3)}
logs=$(mktemp -d)
rows=()

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" >"$logs/$name.log" 2>&1
  rc=$?
  local status="ok"
  [ $rc -eq 124 ] && status="TIMEOUT (${limit} s)"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="FAILED (rc $rc)"
  rows+=("| $name | $status | $(( $(date +%s) - start )) s | $(grep -v '^\s*$' "$logs/$name.log" | tail -n 1 | cut -c1-160) |")
}

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || { echo "no CUDA device: nothing to check"; exit 1; }
step capture-equals-cpu 60 "$PY" benchmarks/gpu_check.py capture
step bench-fp32 105 "$PY" benchmarks/bench_capture.py --device cuda --dtype float32 --shapes gpt2-small mamba-130m
step bench-bf16 105 "$PY" benchmarks/bench_capture.py --device cuda --dtype bfloat16 --shapes gpt2-small mamba-130m
step syncs 30 "$PY" benchmarks/gpu_check.py syncs
step oom-backoff 60 "$PY" benchmarks/gpu_check.py oom
step suite-cuda 120 "$PY" -m pytest suite --device cuda --no-cache --out "$logs/suite" -p no:cacheprovider -q

echo
echo "| step | status | time | last line |"
echo "| --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
echo
for bench in bench-fp32 bench-bf16; do echo "## $bench"; grep '^|' "$logs/$bench.log"; done
echo "logs: $logs"
