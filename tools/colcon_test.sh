#!/usr/bin/env bash
# The dart_ros package's tests as a ROS workspace runs them: `colcon test` + `colcon test-result`
# on the workspace tools/setup.sh built. Extra arguments go to pytest (e.g. -k launch).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/distro.sh
. "$ROOT/tools/distro.sh"
# shellcheck disable=SC1090
. "$DART_SETUP"
WS=$DART_ROS_WS
export DART_REQUIRE_ROS=1
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( 20 + $$ % 60 ))}
args=(colcon --log-base "$WS/log" test --base-paths "$ROOT/dart_ros" --build-base "$WS/build"
      --install-base "$WS/install" --packages-select dart_ros --event-handlers console_direct+)
[ $# -gt 0 ] && args+=(--pytest-args "$@")
run="$(printf '%q ' "${args[@]}") && colcon test-result --test-result-base $(printf '%q' "$WS/build/dart_ros") --verbose"
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && unshare -n true 2>/dev/null; then
  exec unshare -n bash -c "ip link set lo up && $run"
fi
exec bash -c "$run"
