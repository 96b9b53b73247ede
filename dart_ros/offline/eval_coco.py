r"""COCO box AP of the Detector (pycocotools), resumable, multi-GPU through torchrun.

    python offline/eval_coco.py --annotations instances_val2017.json --images val2017 \
        --sam3-checkpoint sam3.pt --backbone vit_h --precision bf16 --out-dir runs/eval_vith
    python offline/eval_coco.py ... --max-images 500                  # a quick run
    python offline/eval_coco.py ... --protocol nms                    # DART's student protocol
    torchrun --nproc_per_node 8 offline/eval_coco.py ...             # shards the images

All 80 category names are the prompts unless --classes-file / --synonyms say otherwise. Writes
results.json (stats, per-class AP, config, model identity), per_class_ap.png and a prediction
cache per rank; re-running the same command continues where it stopped.
"""

import os
import sys

from dart_ros.cliutil import cli_main, dataclass_from_args, parse_job_args
from dart_ros.config import DetectorConfig
from dart_ros.evaluation.coco import EvalConfig, format_table, run


def body(argv=None) -> int:
    ap, args = parse_job_args(__doc__, [(EvalConfig, "evaluation"), (DetectorConfig, "detector")], argv)
    results = run(dataclass_from_args(EvalConfig, args), dataclass_from_args(DetectorConfig, args))
    if results is not None:
        print(format_table(results))
        print(f"\nwrote {os.path.join(args.out_dir or EvalConfig.out_dir, 'results.json')}")
    return 0


def main(argv=None) -> int:
    return cli_main(body, argv)


if __name__ == "__main__":
    sys.exit(main())
