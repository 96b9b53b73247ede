r"""Distil a timm student backbone's FPN adapter from SAM3's ViT-H (DART adapter distillation).

Single GPU (or CPU):
    python offline/distill.py --images /data/coco/train2017 --student repvit_m2_3 \
        --sam3-checkpoint sam3.pt --timm-weights repvit_m2_3.safetensors --out-dir runs/repvit
Several GPUs (one process each, DDP):
    torchrun --nproc_per_node 8 offline/distill.py --images /data/coco/train2017 --batch-size 16 ...
Detection-level only (detection reads only the P² level):
    python offline/distill.py ... --level-weights 0 0 1

Resumes from <out-dir>/last.pt when present. Writes adapter_epoch{E}.pt / adapter_final.pt in the
DART student format, train_log.jsonl, summary.json, loss.png and the resolved config.json.
"""

import sys

from dart_ros.cliutil import run_training_job
from dart_ros.training.distill import DistillConfig, run


def main(argv=None) -> int:
    return run_training_job(DistillConfig, run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
