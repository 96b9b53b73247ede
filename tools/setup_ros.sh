#!/usr/bin/env bash
# ROS 2 from PyPI wheels (Kilted, or Jazzy with DART_ROS_DISTRO=jazzy) + a colcon workspace with
# dart_ros_interfaces, dart_ros and, when the system has none, the vision_msgs mirror in
# tools/vision_msgs_mirror. On a machine with a real ROS install, build dart_ros_interfaces/ and
# dart_ros/ in your own workspace instead (README).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/distro.sh
. "$ROOT/tools/distro.sh"
VENV=$DART_VENV
WS=$DART_ROS_WS
# shellcheck disable=SC1091
. "$VENV/bin/activate"

D=$DART_ROS_DISTRO
ROS_PKGS=(
  "ros-$D-rclpy[fastrtps]" "ros-$D-std-msgs" "ros-$D-sensor-msgs" "ros-$D-geometry-msgs"
  "ros-$D-visualization-msgs"
  "ros-$D-std-srvs" "ros-$D-diagnostic-msgs" "ros-$D-lifecycle-msgs" "ros-$D-builtin-interfaces"
  "ros-$D-ament-cmake" "ros-$D-ament-cmake-python" "ros-$D-ament-cmake-include-directories"
  "ros-$D-ament-package" "ros-$D-rosidl-default-generators" "ros-$D-rosidl-core-generators"
)
if [ "$D" = jazzy ]; then  # what Jazzy's rosidl_generator_py and ament_cmake_ros need besides
  ROS_PKGS+=("ros-$D-python-cmake-module" "ros-$D-ament-cmake-ros" "ros-$D-ament-cmake-gmock"
             "ros-$D-ament-cmake-gtest" "ros-$D-ament-cmake-pytest")
else
  ROS_PKGS+=("ros-$D-ament-cmake-ros-core")
fi
pip install -q --progress-bar off --disable-pip-version-check "${ROS_PKGS[@]}" colcon-common-extensions
python "$ROOT/tools/fix_ros_wheel_paths.py" "$VENV"

export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
base_paths=("$ROOT/dart_ros_interfaces" "$ROOT/dart_ros")
if python -c 'from ament_index_python.packages import get_package_prefix as p; p("vision_msgs")' 2>/dev/null; then
  echo "vision_msgs found on the system: using it"
else
  echo "no vision_msgs on the system: building the wire-compatible mirror"
  rm -rf "$WS/src/vision_msgs" && mkdir -p "$WS/src"
  cp -r "$ROOT/tools/vision_msgs_mirror" "$WS/src/vision_msgs" && rm -f "$WS/src/vision_msgs/COLCON_IGNORE"
  base_paths+=("$WS/src/vision_msgs")
fi
cd "$ROOT"
colcon --log-base "$WS/log" build --symlink-install \
  --base-paths "${base_paths[@]}" --build-base "$WS/build" --install-base "$WS/install" \
  --event-handlers console_cohesion- summary+ status- \
  --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$VENV/bin/python"
