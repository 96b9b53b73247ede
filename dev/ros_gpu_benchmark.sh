#!/usr/bin/env bash
# The detector node over real DDS on a CUDA machine that has torch but no ROS and no network:
# ROS 2 (Kilted) from a folder of wheels into that Python, the workspace built, then
# offline/ros_benchmark.py for each backbone (1920x1080 rgb8, pipelining on, the library beside it),
# with a second start of the first backbone on the kernel caches its first start wrote.
#
#   bash dev/ros_gpu_benchmark.sh WHEEL_DIR OUT_DIR [backbone ...]     (default: vit_h repvit_m2_3)
#
# WHEEL_DIR: the wheels tools/setup_ros.sh installs, for this Python (pip download
# --python-version ...; `pip wheel empy==4.2.1` for empy), plus dart_ros's requirements the
# machine lacks. Environment: BENCH_ARGS (extra ros_benchmark arguments), DART_ROS_WS, SETUP_ONLY=1
# (install and build, no benchmark), STARTS_ONLY=1 (the first backbone's two starts, each with a
# short rate probe, no search).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEELS=$(cd "$1" && pwd)
mkdir -p "$2"
OUT=$(cd "$2" && pwd)
shift 2
if [ $# -gt 0 ]; then BACKBONES=("$@"); else BACKBONES=(vit_h repvit_m2_3); fi

DART_VENV=$(python3 -c 'import sys; print(sys.prefix)')
[ -f "$DART_VENV/bin/activate" ] || { echo "python3 is not a virtual environment's ($DART_VENV)" >&2; exit 2; }
export DART_VENV DART_ROS_WS=${DART_ROS_WS:-/tmp/dart_ros_ws}
# An installed Python package keeps its compiled bytecode; an environment that forbids writing it
# recompiles torch's sources in every process, seconds of every start that no user pays.
unset PYTHONDONTWRITEBYTECODE
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELS"
# tools/setup_ros.sh calls `pip`: make it this Python's, whether or not the environment has a pip script
SHIM=$(mktemp -d)
printf '#!/bin/sh\nexec "%s" -m pip "$@"\n' "$(command -v python3)" >"$SHIM/pip" && chmod +x "$SHIM/pip"
export PATH="$SHIM:$PATH"
# the wheels of distributions this Python lacks (never replacing what it has, torch's stack above all)
mapfile -t missing < <(python3 - "$WHEELS" <<'PY'
import glob, importlib.metadata as md, os, re, sys
for w in sorted(glob.glob(os.path.join(sys.argv[1], "*.whl"))):
    name = re.sub(r"[-_.]+", "-", os.path.basename(w).split("-")[0]).lower()
    try:
        md.version(name)
    except md.PackageNotFoundError:
        if not name.startswith(("ros-", "colcon-")):  # those tools/setup_ros.sh installs by name
            print(w)
PY
)
[ ${#missing[@]} -eq 0 ] || python3 -m pip install -q --no-deps --disable-pip-version-check "${missing[@]}"
bash "$ROOT/tools/setup_ros.sh" >"$OUT/setup_ros.log" 2>&1 || { tail -30 "$OUT/setup_ros.log"; exit 1; }

[ "${SETUP_ONLY:-0}" = 1 ] && exit 0

set +u
# shellcheck disable=SC1091
. "$DART_ROS_WS/install/setup.bash"
set -u
export AMENT_PREFIX_PATH="$AMENT_PREFIX_PATH:$DART_VENV"
export FASTDDS_DEFAULT_PROFILES_FILE="$ROOT/tools/fastdds_localhost.xml" ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-42}
CACHE=$(mktemp -d)  # empty: the first start compiles and tunes everything

bench() {  # backbone, output name, extra arguments
  local backbone=$1 name=$2
  shift 2
  local cmd=(python3 offline/ros_benchmark.py --synthetic 1920x1080 --frames 20 --start-node
             --params-file "config/$backbone.yaml" --param pipelining=true --param "cache_dir=$CACHE"
             --out "$OUT/$name" "$@")
  # shellcheck disable=SC2086
  if [ "$(id -u)" = 0 ] && command -v ip >/dev/null && unshare -n true 2>/dev/null; then
    unshare -n bash -c 'ip link set lo up && exec "$@"' _ "${cmd[@]}" ${BENCH_ARGS:-}
  else
    "${cmd[@]}" ${BENCH_ARGS:-}
  fi
}

search=(--lower 10 --upper 200 --width 4 --step 2 --duration 2 --drain-s 2 --fixed-rates 30 --iterations 3
        --library --library-s 4)
short=(--lower 5 --upper 10 --width 5 --duration 2 --drain-s 2 --fixed-rates --iterations 1)
cd "$ROOT/dart_ros"
if [ "${STARTS_ONLY:-0}" = 1 ]; then
  bench "${BACKBONES[0]}" "ros_${BACKBONES[0]}_first_start" "${short[@]}" || true
  bench "${BACKBONES[0]}" "ros_${BACKBONES[0]}_second_start" "${short[@]}" || true
  exit 0
fi
bench "${BACKBONES[0]}" "ros_${BACKBONES[0]}" "${search[@]}" || true
# a second start of the first backbone: the compile and autotune caches are warm now
bench "${BACKBONES[0]}" "ros_${BACKBONES[0]}_second_start" "${short[@]}" || true
for b in "${BACKBONES[@]:1}"; do
  bench "$b" "ros_$b" "${search[@]}" || true
done
