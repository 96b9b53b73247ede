"""Launch the dart detector node (and optionally RViz).

    ros2 launch dart_ros detector.launch.py backbone:=repvit_m2_3 image:=/camera/image_raw \
        classes:="person, forklift" sam3_checkpoint:=~/models/sam3.pt \
        backbone_checkpoint:=~/models/repvit_m2_3_distilled.pt use_rviz:=true

Arguments and their mapping onto nodes, parameters and remappings live in
dart_ros.ros.launch_logic (tested without launch).
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from dart_ros.ros.launch_logic import LAUNCH_ARGUMENTS, launch_from_arguments
from launch import LaunchDescription


def _nodes(context):
    values = {k: LaunchConfiguration(k).perform(context) for k in LAUNCH_ARGUMENTS}
    return [
        Node(
            package=s.package,
            executable=s.executable,
            name=s.name,
            namespace=s.namespace,
            parameters=s.parameters,
            remappings=s.remappings,
            arguments=s.arguments,
            output="screen",
        )
        for s in launch_from_arguments(values)
    ]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(k, default_value=d, description=desc) for k, (d, desc) in LAUNCH_ARGUMENTS.items()]
        + [OpaqueFunction(function=_nodes)]
    )
