#!/usr/bin/env bash
# The main job: run the detector end to end on a generated image stream (no camera needed).
#   ./tools/demo.sh                       random-weight tiny model on the CPU (says so)
#   ./tools/demo.sh --sam3 path/sam3.pt   the real SAM3 model (a GPU is recommended)
# All options: ./tools/demo.sh --help
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/distro.sh
. "$ROOT/tools/distro.sh"
# shellcheck disable=SC1090
. "$DART_SETUP"
cd "$ROOT"
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( 20 + $$ % 60 ))}
run=(python -m dart_ros.ros.demo "$@")
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && unshare -n true 2>/dev/null; then
  exec unshare -n bash -c 'ip link set lo up && exec "$@"' _ "${run[@]}"
fi
exec "${run[@]}"
