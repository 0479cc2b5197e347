#!/usr/bin/env bash
# GPU benchmark run on an offline machine: one prepared script, about 8 minutes on one H200
# (docs/benchmarks.md, "GPU procedure").
#
#   OUT=/path/to/results bash benchmarks/gpu_check.sh [--quick]     # from the repository root
#
# Never touches the network. Python: $PYTHON, else python3 (the device image's, which has jax with
# the CUDA plugin). Packages the image lacks travel as wheels in .whl/ (`bash benchmarks/device_wheels.sh`
# on a machine with PyPI): they are installed with --no-index --no-deps into /tmp/site, then every
# import is verified first, one line per package with its version; a missing one stops the run.
#
# Runs, most important first, each with its own timeout, no new run once BUDGET_S (default 450 s;
# --quick 200 s) is spent:
#   (a) libero_step: the 2B libero training step (bf16, synthetic data, the config's remat and VAE
#       passes) on one GPU at the largest per-device batch of $BATCHES (default "30 24 16 8") that
#       fits (a smaller one is tried only after an out-of-memory failure); samples/s, MFU against a bf16 matmul measured in the same run, XLA's memory plan and the
#       allocator's peak (memory_stats());
#   (b) vae224: the VAE encode at production size (30 x 3 x 33 x 224 x 224, bf16, 6 passes);
#   (c) sample_libero: one 2B action chunk (5 sampler steps) at 224 px;
#   (d) bench_step: the fp32 `bench` step, comparable with the CPU figures;
#   (e) serve_demo: policy serving on the demo config, 1/4/16 clients, in-process and both protocols,
#       with the bare call's batching bound (issue: 16 clients >= 3x one client);
#   (f) libero_parts: the 2B step's DiT-alone and VAE-alone programs at the batch of (a) (the split
#       of the step's time), only if the budget allows.
# --quick: (a) only, with fewer timed steps.
# Writes to $OUT (at most 9 files): env.txt, log.txt and one JSON per run.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
OUT=${OUT:-$ROOT/outputs/gpu_check}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
if [ "$QUICK" = 1 ]; then BUDGET_S=${BUDGET_S:-200}; else BUDGET_S=${BUDGET_S:-450}; fi
BATCHES=${BATCHES:-30 24 16 8}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# One GPU, nothing else on it: let XLA take nearly all of its memory (JAX preallocates 75% by default).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
SECONDS=0

log() { echo "[gpu_check ${SECONDS}s] $*" | tee -a "$LOG"; }

PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  log "installing carried wheels from .whl/ into /tmp/site (no index, no deps)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { log "error: installing .whl/ failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# The project itself from the checkout (no install needed); the benchmark scripts add benchmarks/.
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "python: $(command -v "$PY") ($("$PY" --version 2>&1))"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
} >"$OUT/env.txt"
# One line per package with its version; a failed import stops the run here, not minutes later.
if ! "$PY" benchmarks/check_imports.py >>"$OUT/env.txt" 2>&1; then
  cat "$OUT/env.txt" | tee -a "$LOG"
  log "error: a required package does not import (see above)"
  exit 1
fi
cat "$OUT/env.txt" | tee -a "$LOG"

# run NAME TIMEOUT_S ARGS...: one benchmark; its last stdout line (the JSON) goes to $OUT/NAME.json,
# its stderr to the log (and to /tmp/gpu_check_NAME.err, which `oom NAME` reads).
run() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - SECONDS))
  if [ "$left" -lt 45 ]; then
    log "skip $name: ${left}s of the budget left"
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "run $name (timeout ${limit}s): $*"
  timeout "$limit" "$PY" "$@" 2>"/tmp/gpu_check_$name.err" | tee -a "$LOG" | tail -n 1 >"$OUT/$name.json"
  local rc=${PIPESTATUS[0]}
  cat "/tmp/gpu_check_$name.err" >>"$LOG"
  grep -E "Error|error:" "/tmp/gpu_check_$name.err" | tail -n 3
  log "done $name: rc=$rc"
  [ "$rc" = 0 ] && grep -q '^{' "$OUT/$name.json"
}

# oom NAME: did the last run of NAME fail for lack of device memory?
oom() { grep -qiE "RESOURCE_EXHAUSTED|out of memory|OOM" "/tmp/gpu_check_$1.err"; }

LIBERO=(--config=configs/cosmos_policy.py:libero,synthetic,random_weights --mesh=1,1,1
  --config.dataloader_train.num_workers=0)

# (a) The 2B libero step at the largest batch that fits (tried from the largest; an out-of-memory
#     compile or run falls through to the next).
STEPS=(--steps=5 --warmup=2)
[ "$QUICK" = 1 ] && STEPS=(--steps=3 --warmup=1)
FIT=""
for bs in $BATCHES; do
  if run libero_step 240 benchmarks/train_step.py "${LIBERO[@]}" --config.dataloader_train.batch_size="$bs" \
    "${STEPS[@]}" --parts=full --json; then
    FIT=$bs
    break
  fi
  # Only an out-of-memory failure tries a smaller batch; anything else (a timeout, a bug) stops here.
  oom libero_step || break
  log "batch $bs does not fit: trying a smaller one"
done
log "libero step: largest batch that ran: ${FIT:-none}"

if [ "$QUICK" = 0 ]; then
  # (b) The VAE encode at production size (30 videos of 33 x 224 x 224, bf16, 6 passes of 5).
  run vae224 75 benchmarks/vae_encode.py --batch=30 --size=224 --dtype=bfloat16 --batch-steps=6 --repeats=5 --json
  # (c) One 2B action chunk (5 sampler steps) at 224 px.
  run sample_libero 90 benchmarks/sample_actions.py --config=configs/cosmos_policy.py:libero \
    --config.checkpoint.load_path= --steps=10 --json
  # (d) The fixed bench config (fp32), comparable with the CPU figures.
  run bench_step 120 benchmarks/train_step.py --config=configs/cosmos_policy.py:bench --steps=10 --warmup=3 --json
  # (e) Serving: does batching 16 clients pay where one row leaves the device idle?
  run serve_demo 150 benchmarks/serve_latency.py --configs=demo --clients=1,4,16 --requests=10 --json
  # (f) Where the 2B step's time goes: the DiT step on latents and the VAE encode alone.
  [ -n "$FIT" ] && run libero_parts 150 benchmarks/train_step.py "${LIBERO[@]}" \
    --config.dataloader_train.batch_size="$FIT" --steps=3 --warmup=1 --parts=dit,vae --json
fi

log "finished in ${SECONDS}s; results in $OUT"
ls -la "$OUT" | tee -a "$LOG"
