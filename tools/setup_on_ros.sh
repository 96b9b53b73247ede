#!/usr/bin/env bash
# Install dart_ros into a colcon workspace on a machine with ROS 2 installed (Ubuntu, /opt/ros):
#
#   source /opt/ros/jazzy/setup.bash
#   cd ~/ros2_ws && git clone <this repository> src/dart_ros
#   bash src/dart_ros/tools/setup_on_ros.sh
#   source install/setup.bash && ros2 launch dart_ros detector.launch.py
#
# 1. rosdep installs what package.xml names: ROS packages and the distribution's Python packages
#    (numpy, opencv, pillow, psutil, scipy, tqdm, yaml) with apt.
# 2. A virtual environment that sees the system's packages (--system-site-packages) gets what no
#    distribution packages (PyTorch, sam3, timm, open-clip-torch: dart_ros/requirements.txt), with
#    the system's numpy held by a constraints file: cv_bridge and the rest of the ROS stack are
#    built against it. The system Python itself is never touched (PEP 668).
# 3. colcon builds the workspace with the venv's Python, so the installed executables (ros2 run,
#    ros2 launch) run in the venv without activating it.
#
# Environment: DART_WS (workspace, default: the current folder), DART_VENV (default: $DART_WS/.venv),
# DART_TORCH (the PyTorch requirement, default: the PyPI pair the project tests; on Jetson put the
# NVIDIA build here), DART_SKIP_ROSDEP=1 (dependencies already installed).
set -euo pipefail
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WS=$(cd "${DART_WS:-$PWD}" && pwd)
VENV=${DART_VENV:-$WS/.venv}
TORCH=${DART_TORCH:-torch==2.14.0 torchvision==0.29.2}
PIP_FLAGS=(-q --progress-bar off --disable-pip-version-check)

step() { printf '\n== %s\n' "$*"; }
die() { echo "setup_on_ros: $*" >&2; exit 1; }

[ -n "${ROS_DISTRO:-}" ] || die "no ROS 2 environment: source /opt/ros/<distro>/setup.bash first"
case "$SRC/" in "$WS"/*) ;; *) die "$SRC is not inside the workspace $WS (set DART_WS or run from the workspace)" ;; esac
SYSTEM_PYTHON=$(command -v python3) || die "no python3 on PATH"
[ "${VIRTUAL_ENV:-}" = "" ] || die "deactivate the virtual environment first ($VIRTUAL_ENV)"

if [ "${DART_SKIP_ROSDEP:-0}" != 1 ]; then
  step "ROS and distribution packages (rosdep)"
  command -v rosdep >/dev/null || die "rosdep not found: sudo apt install python3-rosdep (then sudo rosdep init; rosdep update)"
  rosdep install --from-paths "$SRC" --ignore-src -y --rosdistro "$ROS_DISTRO"
fi

step "Python environment: $VENV (sees the system's packages)"
[ -x "$VENV/bin/python" ] || "$SYSTEM_PYTHON" -m venv --system-site-packages "$VENV"
# Hold every package the ROS Python already has at its version (numpy above all): pip then only
# adds what is missing and never shadows the distribution's builds.
"$SYSTEM_PYTHON" - > "$VENV/dart_constraints.txt" <<'PY'
import importlib.metadata as md
for name in ("numpy", "opencv-python", "opencv-python-headless", "pillow", "PyYAML", "psutil", "scipy", "tqdm"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
PY
# colcon's ament_python builds run the venv's setuptools: colcon-core needs < 80 (torch >= 77).
echo "setuptools<80" >> "$VENV/dart_constraints.txt"
python_has() { "$SYSTEM_PYTHON" -c "import $1" 2>/dev/null; }
reqs=()
while IFS= read -r line; do
  line=${line%%#*}; line=${line// /}
  [ -n "$line" ] || continue
  name=${line%%[<>=!~]*}
  # A module the distribution already provides (rosdep installed it) is not installed again.
  case "$name" in
    numpy) python_has numpy && continue ;;
    opencv-python-headless) python_has cv2 && continue ;;
    pillow) python_has PIL && continue ;;
    psutil) python_has psutil && continue ;;
    scipy) python_has scipy && continue ;;
    pyyaml) python_has yaml && continue ;;
    tqdm) python_has tqdm && continue ;;
    torch|torchvision) continue ;;  # DART_TORCH
  esac
  reqs+=("$line")
done < "$SRC/dart_ros/requirements.txt"
echo "constraints: $(tr '\n' ' ' < "$VENV/dart_constraints.txt")"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" -c "$VENV/dart_constraints.txt" $TORCH "${reqs[@]}"
"$VENV/bin/python" - <<'PY'
import numpy, torch, sam3, timm  # noqa: F401
print("venv ok: numpy", numpy.__version__, "| torch", torch.__version__)
PY

step "colcon build (the venv's Python)"
cd "$WS"
"$VENV/bin/python" -m colcon build --packages-up-to dart_ros --base-paths "$WS/src" \
  --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF
echo
echo "Done. In a new shell: source $WS/install/setup.bash"
echo "  ros2 launch dart_ros detector.launch.py classes:='person, chair'"
echo "  (offline tools and python -m dart_ros...: also source $VENV/bin/activate)"
