#!/usr/bin/env bash
# Tests the stock-ROS install path (tools/setup_on_ros.sh, the README's "In a ROS 2 workspace") the
# closest way the PyPI wheels allow, without apt:
#   - "the distribution": a Python environment playing /usr/lib/python3 + /opt/ros/<distro>. Its
#     packages come from `rosdep install` itself, run on our package.xml files with rules that
#     resolve each key to the pip build of what apt would install (Ubuntu 24.04's numpy 1.26.4,
#     opencv 4.6, ...; ROS packages as ros-<distro>-* wheels). A key without a rule fails the test.
#   - a fresh colcon workspace with a clean copy of this repository in src/;
#   - the user's venv sees the distribution's packages (a .pth file does what --system-site-packages
#     does over a real system Python), then setup_on_ros.sh runs as a user would run it;
#   - checks: the venv kept the distribution's numpy and added no second copy of what the
#     distribution provides, the installed executables run with the venv's Python, and the demo
#     (detector node + image player over real DDS) passes in that environment.
# DART_ROS_DISTRO=jazzy (default) or kilted. Leaves everything under .stock_ros_test/ (ignored).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
D=${DART_ROS_DISTRO:-jazzy}
T=$ROOT/.stock_ros_test
PYTHON=${PYTHON:-python3}
step() { printf '\n== stock-ROS test (%s): %s\n' "$D" "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

rm -rf "$T" && mkdir -p "$T/rosdep/sources.list.d" "$T/ws/src"
DISTRO=$T/distro

step "the distribution's Python with rosdep and colcon (as apt gives them)"
"$PYTHON" -m venv "$DISTRO"
"$DISTRO/bin/pip" install -q --progress-bar off --disable-pip-version-check rosdep colcon-common-extensions 'setuptools<80' wheel

step "a workspace with this repository in src/ (and vision_msgs, which is not on PyPI)"
mkdir "$T/ws/src/dart_ros"
git -C "$ROOT" ls-files -z | (cd "$ROOT" && xargs -0 tar -cf -) | tar -xf - -C "$T/ws/src/dart_ros"
cp -r "$ROOT/tools/vision_msgs_mirror" "$T/ws/src/vision_msgs" && rm -f "$T/ws/src/vision_msgs/COLCON_IGNORE"

step "rosdep rules: each key to the pip build of its Ubuntu 24.04 / ROS $D package"
"$DISTRO/bin/python" - "$D" "$T/rosdep/rules.yaml" <<'PY'
import sys

import yaml

distro, out = sys.argv[1], sys.argv[2]
ros = lambda *names: [f"ros-{distro}-{n.replace('_', '-')}" for n in names]  # noqa: E731
extra_build = ["python_cmake_module", "ament_cmake_ros", "ament_cmake_gmock", "ament_cmake_gtest",
               "ament_cmake_pytest"] if distro == "jazzy" else ["ament_cmake_ros_core"]
# rosdep recognises a pip install by the bare name: the versions are pinned by PIP_CONSTRAINT
noble = {"python3-numpy": "numpy==1.26.4", "python3-opencv": "opencv-python-headless==4.6.0.66",
         "python3-pil": "pillow==10.2.0", "python3-psutil": "psutil==5.9.8", "python3-scipy": "scipy==1.11.4",
         "python3-tqdm": "tqdm==4.66.2", "python3-yaml": "PyYAML==6.0.1",
         "python3-pytest": "pytest==7.4.4"}  # Ubuntu 24.04's versions
open(out.replace("rules.yaml", "constraints.txt"), "w").write("\n".join(noble.values()) + "\n")
pip = {key: [spec.split("==")[0]] for key, spec in noble.items()}
pip.update({
    "rclpy": ros("rclpy", "rmw_fastrtps_cpp"),
    "ament_cmake": ros("ament_cmake", "ament_cmake_python", "ament_cmake_include_directories", "ament_package"),
    "rosidl_default_generators": ros("rosidl_default_generators", "rosidl_core_generators", *extra_build),
    # not on PyPI: vision_msgs is built from the mirror in the workspace; the test starts the node
    # without ros2 launch and RViz
    "vision_msgs": [], "launch": [], "launch_ros": [], "rviz2": [],
})
for name in ("ament_index_python", "builtin_interfaces", "diagnostic_msgs", "geometry_msgs", "lifecycle_msgs",
             "rcl_interfaces", "rosidl_default_runtime", "sensor_msgs", "std_msgs", "std_srvs",
             "visualization_msgs"):
    pip[name] = ros(name)
yaml.safe_dump({key: {"ubuntu": {"pip": {"packages": pkgs}}} for key, pkgs in pip.items()}, open(out, "w"))
PY
cat > "$T/rosdep/index.yaml" <<'Y'
%YAML 1.1
---
type: index
version: 4
distributions: {}
Y
echo "yaml file://$T/rosdep/rules.yaml" > "$T/rosdep/sources.list.d/10-stock-ros-test.list"
export ROSDEP_SOURCE_PATH=$T/rosdep/sources.list.d ROS_HOME=$T/ros_home ROSDISTRO_INDEX_URL=file://$T/rosdep/index.yaml
export ROS_OS_OVERRIDE=ubuntu:24.04:noble ROS_PYTHON_VERSION=3
PATH=$DISTRO/bin:$PATH rosdep update >/dev/null

# What /opt/ros/<distro>/setup.bash sets, for this stand-in (plus DDS kept on this machine); the
# wheels keep some of their libraries in ros_*.libs folders.
site_of() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
cat > "$T/distro_setup.bash" <<SH
_libs="$DISTRO/lib"
for _d in "$(site_of "$DISTRO/bin/python")"/ros_*.libs; do if [ -d "\$_d" ]; then _libs="\$_libs:\$_d"; fi; done
export LD_LIBRARY_PATH="\$_libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
unset _libs _d
export ROS_DISTRO=$D ROS_VERSION=2 ROS_PYTHON_VERSION=3
export PATH="$DISTRO/bin:\$PATH"
export AMENT_PREFIX_PATH="$DISTRO" CMAKE_PREFIX_PATH="$DISTRO"
export FASTDDS_DEFAULT_PROFILES_FILE="$ROOT/tools/fastdds_localhost.xml" FASTRTPS_DEFAULT_PROFILES_FILE="$ROOT/tools/fastdds_localhost.xml"
unset ROS_AUTOMATIC_DISCOVERY_RANGE
SH

step "the user's venv, seeing the distribution's packages"
"$PYTHON" -m venv "$T/ws/.venv"
echo "import site; site.addsitedir('$(site_of "$DISTRO/bin/python")')" > "$(site_of "$T/ws/.venv/bin/python")/_system_site.pth"

step "rosdep install, then tools/setup_on_ros.sh as the README says"
(
  # shellcheck disable=SC1091
  . "$T/distro_setup.bash"
  cd "$T/ws"
  # The script's own rosdep step, with this test's rules (as root, pip needs no sudo); then the
  # ROS wheels' baked-in build paths are repaired (a real /opt/ros install has none).
  PIP_CONSTRAINT=$T/rosdep/constraints.txt rosdep install --from-paths src --ignore-src -y --rosdistro "$D" \
    --as-root pip:false > "$T/rosdep_install.log" 2>&1 || { tail -30 "$T/rosdep_install.log"; exit 1; }
  "$DISTRO/bin/python" "$ROOT/tools/fix_ros_wheel_paths.py" "$DISTRO" >/dev/null
  DART_SKIP_ROSDEP=1 bash src/dart_ros/tools/setup_on_ros.sh
)

step "checks"
VPY=$T/ws/.venv/bin/python
dist_numpy=$("$DISTRO/bin/python" -c 'import numpy; print(numpy.__version__)')
read -r venv_numpy venv_numpy_file < <("$VPY" -c 'import numpy; print(numpy.__version__, numpy.__file__)')
[ "$venv_numpy" = "$dist_numpy" ] || fail "the venv's numpy is $venv_numpy, the distribution's $dist_numpy"
case "$venv_numpy_file" in "$DISTRO"/*) ;; *) fail "numpy comes from $venv_numpy_file, not the distribution" ;; esac
own=$("$VPY" -c 'import sysconfig, os; print(" ".join(sorted(os.listdir(sysconfig.get_paths()["purelib"]))))')
for dup in numpy cv2 PIL yaml psutil tqdm; do
  case " $own " in *" $dup "*) fail "the venv installed a second $dup over the distribution's" ;; esac
done
exe=$T/ws/install/dart_ros/lib/dart_ros/detector_node
[ -x "$exe" ] || fail "no installed detector_node"
shebang=$(head -1 "$exe")
[ "$shebang" = "#!$VPY" ] || fail "detector_node runs with '$shebang', not the venv's Python"
(
  # shellcheck disable=SC1091
  . "$T/distro_setup.bash"
  set +u
  # shellcheck disable=SC1091
  . "$T/ws/install/setup.bash"
  set -u
  help_text=$("$exe" --help) && grep -q "Parameters" <<<"$help_text" || fail "detector_node --help"
  export ROS_DOMAIN_ID=$(( 20 + $$ % 60 ))
  run=("$VPY" -m dart_ros.ros.demo --frames 10 --out "$T/demo")
  if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && unshare -n true 2>/dev/null; then
    unshare -n bash -c 'ip link set lo up && exec "$@"' _ "${run[@]}"
  else
    "${run[@]}"
  fi
) || fail "the installed node in the stock-ROS layout"
echo
echo "stock-ROS install path: OK (numpy $venv_numpy kept, executables on the venv's Python, demo passed)"
