r"""Prune ViT-H blocks for detection, then self-distil the pruned backbone (DART Pruned-N).

Analysis only (importance ranking, greedy search, report JSON + plot):
    python offline/prune.py --images /data/coco/train2017 --sam3-checkpoint sam3.pt \
        --num-remove 16 --analyze-only true --out-dir runs/prune16
Search + self-distillation on 8 GPUs (resumes the search result and the training):
    torchrun --nproc_per_node 8 offline/prune.py --images /data/coco/train2017 --sam3-checkpoint sam3.pt \
        --num-remove 16 --epochs 100 --batch-size 32 --out-dir runs/prune16
Known block list (DART skip-16), sub-block mode:
    python offline/prune.py ... --skip-blocks 5 10 12 14 17 18 19 20 21 22 24 25 26 27 28 30
    python offline/prune.py ... --mode subblock --num-remove 16

Writes prune_report.json/png, pruned_epoch{E}.pt, pruned_final.pt (DART pruned format; load with
the Detector's backbone_checkpoint), train_log.jsonl, loss.png, summary.json, config.json.
"""

import sys

from dart_ros.cliutil import run_training_job
from dart_ros.training.prune import PruneConfig, run


def main(argv=None) -> int:
    return run_training_job(PruneConfig, run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
