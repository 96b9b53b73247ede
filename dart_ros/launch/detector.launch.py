"""Launch the dart detector node (and optionally RViz).

    ros2 launch dart_ros detector.launch.py backbone:=repvit_m2_3 image:=/camera/image_raw \
        classes:="person, forklift" sam3_checkpoint:=~/models/sam3.pt \
        backbone_checkpoint:=~/models/repvit_m2_3_distilled.pt use_rviz:=true

The mapping from arguments to parameters lives in dart_ros.ros.launch_logic (tested without launch).
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from dart_ros.presets import DEFAULT_BACKBONE, LAUNCH_BACKBONES
from dart_ros.ros.launch_logic import detector_launch
from launch import LaunchDescription

ARGS = {
    "backbone": (DEFAULT_BACKBONE, "one of: " + ", ".join(LAUNCH_BACKBONES)),
    "image": ("/camera/image_raw", "input image topic (sensor_msgs/Image)"),
    "compressed": ("false", "subscribe <image>/compressed (sensor_msgs/CompressedImage) instead"),
    "classes": ("", 'vocabulary, e.g. "person, forklift" (default: the preset\'s)'),
    "sam3_checkpoint": ("", "path of sam3.pt (empty: the preset file's value)"),
    "backbone_checkpoint": ("", "DART student or pruned checkpoint"),
    "device": ("", "cuda, cuda:1, cpu (empty: the preset's)"),
    "params_file": ("", "extra parameter YAML applied after the preset"),
    "namespace": ("", "namespace of the node"),
    "node_name": ("dart", "node name (services: /<node_name>/set_classes)"),
    "use_rviz": ("false", "start RViz showing the annotated image"),
    "lifecycle": ("false", "run the managed (lifecycle) node"),
    "autostart": ("true", "lifecycle node: configure and activate at start"),
}


def _nodes(context):
    v = {k: LaunchConfiguration(k).perform(context) for k in ARGS}
    specs = detector_launch(
        backbone=v["backbone"],
        image=v["image"],
        classes=v["classes"],
        namespace=v["namespace"],
        node_name=v["node_name"],
        sam3_checkpoint=v["sam3_checkpoint"],
        backbone_checkpoint=v["backbone_checkpoint"],
        device=v["device"],
        compressed=v["compressed"].lower() == "true",
        params_file=v["params_file"],
        use_rviz=v["use_rviz"].lower() == "true",
        lifecycle=v["lifecycle"].lower() == "true",
        autostart=v["autostart"].lower() == "true",
    )
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
        for s in specs
    ]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(k, default_value=d, description=desc) for k, (d, desc) in ARGS.items()]
        + [OpaqueFunction(function=_nodes)]
    )
