"""colcon (ament_python) build of the dart_ros node package.

The Python sources live at the repository root (``dart_ros/``, ``launch/``, ``config/``) and are
reached through symlinks, so the pip package and the ROS package are the same code. Python
dependencies (torch, sam3, timm …) are installed by pip; see the repository README.
"""

import glob

from setuptools import find_packages, setup

PACKAGE = "dart_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, PACKAGE + ".*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", glob.glob("launch/*.py")),
        ("share/" + PACKAGE + "/config", glob.glob("config/*.yaml") + glob.glob("config/*.rviz")),
    ],
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "detector_node = dart_ros.ros.node:main",
            "detector_lifecycle_node = dart_ros.ros.lifecycle_node:main",
            "image_player = dart_ros.ros.player:main",
            "bag_play = dart_ros.ros.bag_play:main",
        ],
    },
)
