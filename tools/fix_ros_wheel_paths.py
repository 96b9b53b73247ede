"""Repair the build paths baked into the ROS 2 PyPI wheels' CMake exports.

The message wheels' ``export_*__rosidl_generator_pyExport.cmake`` files name the include
directories of the machine that built them (``/opt/python/cp3XX-…/include/python3.X`` and its numpy
include). Any package depending on them then fails to configure. This rewrites those entries to this
interpreter's include directory and numpy's, atomically (new inode: pip/uv may hard-link files from
their caches). Idempotent; re-run after installing more ros-* wheels.
"""

import glob
import os
import re
import sys
import sysconfig
import tempfile

import numpy

PY_INCLUDE = re.compile(r"[^;\"]*/include/python3\.\d+")
NP_INCLUDE = re.compile(r"[^;\"]*/numpy/(?:_)?core/include")


def fix_file(path: str) -> bool:
    with open(path) as f:
        text = f.read()
    new = PY_INCLUDE.sub(sysconfig.get_paths()["include"], text)
    new = NP_INCLUDE.sub(numpy.get_include(), new)
    if new == text:
        return False
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as f:
        f.write(new)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True


def main(prefix: str) -> int:
    files = glob.glob(os.path.join(prefix, "share", "*", "cmake", "*Export*.cmake"))
    changed = [p for p in files if "INTERFACE_INCLUDE_DIRECTORIES" in open(p).read() and fix_file(p)]
    print(f"fix_ros_wheel_paths: {len(changed)} of {len(files)} CMake export files rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else sys.prefix))
