#!/usr/bin/env bash
# Run the test suite: CPU tests always; ROS tests over real DDS confined to this machine;
# GPU tests only where CUDA exists. Extra arguments go to pytest (e.g. -k equivalence).
# DART_ROS_DISTRO=jazzy runs them in the Jazzy environment (tools/setup.sh with the same variable).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/distro.sh
. "$ROOT/tools/distro.sh"
# shellcheck disable=SC1090
. "$DART_SETUP"
cd "$ROOT/dart_ros"
# Localhost-only DDS (never multicast out of the machine) and a private domain for this run.
[ -d "$DART_ROS_WS/install" ] && export DART_REQUIRE_ROS=1
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( 20 + $$ % 60 ))}
run=(python -m pytest -ra -p no:cacheprovider "$@")
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && unshare -n true 2>/dev/null; then
  # A private network namespace: even a misconfigured DDS participant cannot reach the network.
  exec unshare -n bash -c 'ip link set lo up && exec "$@"' _ "${run[@]}"
fi
exec "${run[@]}"
