#!/usr/bin/env bash
# ROS 2 Kilted from PyPI wheels + a colcon workspace (.ros_ws) with dart_ros_interfaces, dart_ros
# and, when the system has none, the vision_msgs mirror in tools/vision_msgs_mirror.
# On a machine with a real ROS install, build dart_ros_interfaces/ and dart_ros/ in your own workspace (README).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${DART_VENV:-$ROOT/.venv}
WS=$ROOT/.ros_ws
# shellcheck disable=SC1091
. "$VENV/bin/activate"

ROS_PKGS=(
  "ros-kilted-rclpy[fastrtps]" ros-kilted-std-msgs ros-kilted-sensor-msgs ros-kilted-geometry-msgs
  ros-kilted-std-srvs ros-kilted-diagnostic-msgs ros-kilted-lifecycle-msgs ros-kilted-builtin-interfaces
  ros-kilted-ament-cmake ros-kilted-ament-cmake-python ros-kilted-ament-cmake-include-directories
  ros-kilted-ament-package ros-kilted-rosidl-default-generators ros-kilted-rosidl-core-generators
  ros-kilted-ament-cmake-ros-core
)
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
