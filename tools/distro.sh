# Sourced by the tools: which ROS 2 distribution this checkout's environment uses, and where it
# lives. DART_ROS_DISTRO=kilted (default) uses .venv, .ros_ws and setup.bash; another distro
# (jazzy) gets its own: .venv-jazzy, .ros_ws-jazzy, setup-jazzy.bash.
DART_ROS_DISTRO=${DART_ROS_DISTRO:-kilted}
case "$DART_ROS_DISTRO" in
  kilted) _dart_suffix="" ;;
  jazzy) _dart_suffix="-jazzy" ;;
  *) echo "DART_ROS_DISTRO must be kilted or jazzy (the distributions on PyPI), got '$DART_ROS_DISTRO'" >&2; exit 2 ;;
esac
DART_VENV=${DART_VENV:-$ROOT/.venv$_dart_suffix}
DART_ROS_WS=${DART_ROS_WS:-$ROOT/.ros_ws$_dart_suffix}
DART_SETUP=${DART_SETUP:-$ROOT/setup$_dart_suffix.bash}
unset _dart_suffix
