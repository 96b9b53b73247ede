"""Label a folder of images or a rosbag image topic with any vocabulary; write a COCO dataset.

    python offline/autolabel.py --source photos/ --classes person forklift pallet \
        --sam3-checkpoint sam3.pt --confidence-threshold 0.4 --out-dir datasets/warehouse
    python offline/autolabel.py --source run1.mcap --topic /camera/image_raw --every-nth 10 \
        --classes car truck bus --merge-groups "car,truck,bus" --sam3-checkpoint sam3.pt --out-dir datasets/road
"""

import argparse
import logging
import sys

from dart_ros.cliutil import add_dataclass_flags, dataclass_from_args
from dart_ros.config import DetectorConfig
from dart_ros.evaluation.autolabel import AutolabelConfig, run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_flags(ap, AutolabelConfig, group="auto-labelling")
    add_dataclass_flags(ap, DetectorConfig, group="detector")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    det_cfg = dataclass_from_args(DetectorConfig, args)
    if not det_cfg.classes:
        ap.error("--classes is required")
    print(run(dataclass_from_args(AutolabelConfig, args), det_cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
