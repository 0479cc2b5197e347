#!/usr/bin/env bash
# Wheels the offline GPU machine lacks, for its Python 3.12 (cp312, manylinux x86_64), into .whl/.
#
#   bash benchmarks/device_wheels.sh            # from the repository root; needs PyPI
#
# The device image (one H200, Python 3.12.3) already has jax/jaxlib 0.11.2 with the CUDA 13 plugin,
# flax, optax, orbax-checkpoint, etils, tensorstore, h5py, safetensors, pillow, pyyaml, numpy, absl-py,
# protobuf, cloudpickle, psutil, msgpack, attrs, wrapt. It lacks grain and ml-collections, and of their
# requirements only array-record and portpicker; for the serving benchmark it lacks websockets,
# json-numpy, dm-tree and the openpi client (whose numpy<2 pin is why everything installs --no-deps).
# Exactly those are fetched, pinned (no duplicates of what is there):
# `gpu_check.sh` installs them with --no-index --no-deps. The working tree that travels to the
# device is limited to 64 MiB, so the total is checked against WHEEL_LIMIT_MIB (default 40).
set -euo pipefail
cd "$(dirname "$0")/.."

# name==version, one per line: the project's tested versions (pyproject.toml) and their missing needs.
WHEELS=(
  grain==0.2.18
  ml-collections==1.1.0
  array-record==0.8.6
  portpicker==1.6.0
  websockets==17.4
  json-numpy==2.1.1
  dm-tree==0.1.10
  openpi-client==0.1.2
)
LIMIT_MIB=${WHEEL_LIMIT_MIB:-40}
PY=${PYTHON:-python3}

grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo '/.whl/' >>.git/info/exclude; }
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"

mib() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }
total=0
for w in .whl/*.whl; do
  size=$(stat -c %s "$w")
  total=$((total + size))
  printf '%-75s %6.2f MiB\n' "$(basename "$w")" "$(mib "$size")"
done
count=$(find .whl -type f -name '*.whl' | wc -l)
[ "$count" -eq "${#WHEELS[@]}" ] || { echo "error: expected ${#WHEELS[@]} wheels in .whl/, found $count" >&2; exit 1; }
tree=$(git ls-files -z | du -cb --files0-from=- 2>/dev/null | tail -n 1 | cut -f1)
echo "wheels: $count files, $(mib "$total") MiB; tracked tree $(mib "$tree") MiB;" \
  "together $(mib $((total + tree))) MiB (the device takes 64 MiB)"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "error: the wheels exceed ${LIMIT_MIB} MiB" >&2
  exit 1
fi
