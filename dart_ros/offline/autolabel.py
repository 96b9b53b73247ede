r"""Label a folder of images or a rosbag image topic with any vocabulary; write a COCO dataset.

    python offline/autolabel.py --source photos/ --classes person forklift pallet \
        --sam3-checkpoint sam3.pt --confidence-threshold 0.4 --out-dir datasets/warehouse
    python offline/autolabel.py --source run1.mcap --topic /camera/image_raw --every-nth 10 \
        --classes car truck bus --merge-groups "car,truck,bus" --sam3-checkpoint sam3.pt --out-dir datasets/road
"""

import json
import sys

from dart_ros.cliutil import cli_main, dataclass_from_args, parse_job_args
from dart_ros.config import DetectorConfig
from dart_ros.evaluation.autolabel import AutolabelConfig, run


def body(argv=None) -> int:
    ap, args = parse_job_args(__doc__, [(AutolabelConfig, "auto-labelling"), (DetectorConfig, "detector")], argv)
    det_cfg = dataclass_from_args(DetectorConfig, args)
    if not det_cfg.classes:
        ap.error("--classes is required")
    print(json.dumps(run(dataclass_from_args(AutolabelConfig, args), det_cfg), indent=1))
    return 0


def main(argv=None) -> int:
    return cli_main(body, argv)


if __name__ == "__main__":
    sys.exit(main())
