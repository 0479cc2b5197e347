#!/usr/bin/env bash
# GPU benchmark run: one prepared script, about 8 minutes on one H200 (docs/benchmarks.md, "GPU procedure").
#
#   OUT=/path/to/results bash benchmarks/gpu_check.sh        # from the repository root
#
# Writes to $OUT (at most 8 files): env.txt, bench_step.json (bench config, fp32), libero_b8.json and
# libero_b16.json (the 2B libero step, bf16, synthetic data, 1 GPU), vae224.json (the VAE encode at
# production size), sample_libero.json (one 2B action chunk) and log.txt. Each run has its own timeout
# and the script stops starting runs once BUDGET_S (default 450 s) is spent, so it ends inside ~8 min.
#
# Python: the first of
#   1. $PYTHON if set;
#   2. python3 if it already imports jax with a GPU backend (the workplace's device image has jax);
#   3. a fresh venv .venv-gpu with `pip install "jax[cuda12]" -e .` (needs network; INSTALL=1 forces it).
# Packages missing from an offline image can be carried as wheels in .whl/ (see docs/benchmarks.md):
# they are installed with --no-index --no-deps into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-${1:-$ROOT/outputs/gpu_check}}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
BUDGET_S=${BUDGET_S:-450}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# One GPU, nothing else on it: let XLA take nearly all of its memory (JAX preallocates 75% by default).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
SECONDS=0

log() { echo "[gpu_check ${SECONDS}s] $*" | tee -a "$LOG"; }

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  log "installing carried wheels from .whl/ into /tmp/site"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

has_gpu_jax() {
  "$1" -c 'import jax, sys; sys.exit(0 if jax.default_backend() == "gpu" else 1)' >/dev/null 2>&1
}

PY=${PYTHON:-}
if [ -z "$PY" ] && [ "${INSTALL:-0}" != 1 ] && [ -x .venv-gpu/bin/python ] && has_gpu_jax .venv-gpu/bin/python; then
  PY=.venv-gpu/bin/python
fi
if [ -z "$PY" ] && [ "${INSTALL:-0}" != 1 ] && has_gpu_jax python3; then
  PY=python3
fi
if [ -z "$PY" ]; then
  log "no Python with GPU jax found: creating .venv-gpu with jax[cuda12] (needs network)"
  python3 -m venv .venv-gpu && .venv-gpu/bin/python -m pip install -q --upgrade pip \
    && .venv-gpu/bin/python -m pip install -q "jax[cuda12]>=0.12" -e . 2>&1 | tail -5 | tee -a "$LOG"
  PY=.venv-gpu/bin/python
fi
# The project itself from the checkout (no install needed); the benchmark scripts add benchmarks/.
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "python: $PY"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  "$PY" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__); print(jax.devices())' 2>&1
  "$PY" -c 'import grain, ml_collections; print("grain", getattr(grain, "__version__", "?"), "ml_collections ok")' 2>&1
} >"$OUT/env.txt"
cat "$OUT/env.txt" | tee -a "$LOG"

# run NAME TIMEOUT_S ARGS...: one benchmark; its last stdout line (the JSON) goes to $OUT/NAME.json.
run() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - SECONDS))
  if [ "$left" -lt 45 ]; then
    log "skip $name: ${left}s of the budget left"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "run $name (timeout ${limit}s): $*"
  timeout "$limit" "$PY" "$@" 2>>"$LOG" | tee -a "$LOG" | tail -n 1 >"$OUT/$name.json"
  log "done $name: rc=${PIPESTATUS[0]}"
}

LIBERO=(--config=configs/cosmos_policy.py:libero,synthetic --config.checkpoint.load_path= --mesh=1,1,1
  --config.dataloader_train.num_workers=0)

# 1. The fixed bench config (fp32), comparable with the CPU figures.
run bench_step 90 benchmarks/train_step.py --config=configs/cosmos_policy.py:bench --steps=10 --warmup=3 --json
# 2. The 2B libero step, bf16, the config's remat (attention_saveable) and VAE passes, one GPU
#    (no FSDP): batch 8, then 16.
run libero_b8 130 benchmarks/train_step.py "${LIBERO[@]}" --config.dataloader_train.batch_size=8 \
  --steps=5 --warmup=2 --json
run libero_b16 130 benchmarks/train_step.py "${LIBERO[@]}" --config.dataloader_train.batch_size=16 \
  --steps=5 --warmup=2 --parts=full --json
# 3. The VAE encode at production size (30 videos of 33 x 224 x 224, bf16, 6 passes of 5).
run vae224 60 benchmarks/vae_encode.py --batch=30 --size=224 --dtype=bfloat16 --batch-steps=6 --repeats=5 --json
# 4. One 2B action chunk (5 sampler steps) at 224 px.
run sample_libero 60 benchmarks/sample_actions.py --config=configs/cosmos_policy.py:libero \
  --config.checkpoint.load_path= --steps=10 --json

log "finished in ${SECONDS}s; results in $OUT"
ls -la "$OUT" | tee -a "$LOG"
