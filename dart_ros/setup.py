"""The dart_ros package: a colcon (ament_python) package and a pip-installable library in one.

``colcon build`` installs the node, the launch file, the parameter files and the offline tools;
``pip install .`` installs the library (and the same entry points) for users without ROS.
The version is read from package.xml, its only source; the runtime dependencies from
requirements.txt (also what tools/setup_on_ros.sh installs beside a ROS install).
"""

import glob
import os
import re

from setuptools import find_packages, setup

PACKAGE = "dart_ros"
HERE = os.path.dirname(os.path.abspath(__file__))


def package_version() -> str:
    with open(os.path.join(HERE, "package.xml"), encoding="utf-8") as f:
        return re.search(r"<version>\s*([^<\s]+)\s*</version>", f.read()).group(1)


def requirements() -> list:
    # realpath: colcon's --symlink-install runs a symlink of this file from a build folder that
    # holds links to setup.py, setup.cfg and package.xml only
    with open(os.path.join(os.path.dirname(os.path.realpath(__file__)), "requirements.txt"), encoding="utf-8") as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


def files(pattern: str):
    # Relative paths: setup.py runs from this folder under pip and colcon alike.
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


setup(
    name=PACKAGE,
    version=package_version(),
    description="Real-time open-vocabulary multi-class detection with SAM3 and the DART method, for ROS 2",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, PACKAGE + ".*"]),
    install_requires=requirements(),
    extras_require={
        "offline": ["pycocotools>=2.0.7", "matplotlib", "onnx", "onnxruntime", "rosbags>=0.10"],
        # CUDA machines: cuBLASLt algorithm choice for the ViT's GEMMs (DetectorConfig.tune_gemms)
        "gpu": ["nvmath-python>=1.0"],
        "test": ["pytest>=7", "pytest-rerunfailures", "ruff==0.17.6", "motmetrics>=1.4"],
    },
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", files("launch/*.py")),
        ("share/" + PACKAGE + "/config", files("config/*.yaml") + files("config/*.rviz")),
        ("share/" + PACKAGE + "/offline", files("offline/*.py")),
    ],
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "detector_node = dart_ros.ros.node:main",
            "detector_lifecycle_node = dart_ros.ros.lifecycle_node:main",
            "image_player = dart_ros.ros.player:main",
            "bag_play = dart_ros.ros.bag_play:main",
            "dart-detect = dart_ros.cli:detect_main",
        ],
    },
)
