r"""Write a small synthetic COCO dataset (filled shapes on noise) to try the offline tools with.

    python offline/synthetic_coco.py --out-dir /tmp/dart_tiny                # 8 images, 3 categories
    python offline/synthetic_coco.py --out-dir /tmp/dart_tiny --images 100 --size 640x480

Writes <out-dir>/images/*.jpg and <out-dir>/instances.json (categories person, car, dog with
COCO's ids 1, 3, 18; one to three boxes per image). With random-weight models the numbers the
tools report on it are meaningless; it exists to see every tool run end to end in a minute.
"""

import argparse
import json
import os
import sys

import numpy as np

from dart_ros.cliutil import add_debug_flag, cli_main

CATEGORIES = {1: "person", 3: "car", 18: "dog"}
COLOURS = {1: (220, 40, 40), 3: (40, 200, 40), 18: (40, 60, 220)}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", required=True, help="folder to write images/ and instances.json into")
    ap.add_argument("--images", type=int, default=8, help="number of images")
    ap.add_argument("--size", default="160x120", help="image size WxH in pixels")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    add_debug_flag(ap)
    return ap.parse_args(argv)


def body(argv=None) -> int:
    import cv2

    args = parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    if args.images < 1 or w < 32 or h < 32:
        raise ValueError("--images must be >= 1 and --size at least 32x32")
    rng = np.random.default_rng(args.seed)
    os.makedirs(os.path.join(args.out_dir, "images"), exist_ok=True)
    images, annotations = [], []
    for i in range(args.images):
        img = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            cat = int(rng.choice(list(CATEGORIES)))
            bw, bh = int(rng.integers(w // 6, w // 2)), int(rng.integers(h // 6, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            cv2.rectangle(img, (x, y), (x + bw - 1, y + bh - 1), COLOURS[cat], -1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "bbox": [x, y, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }  # fmt: skip
            )
        name = f"{i:06d}.jpg"
        cv2.imwrite(os.path.join(args.out_dir, "images", name), img[:, :, ::-1])
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    categories = [{"id": k, "name": v, "supercategory": "object"} for k, v in CATEGORIES.items()]
    with open(os.path.join(args.out_dir, "instances.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    print(f"wrote {len(images)} images and {len(annotations)} boxes to {args.out_dir}")
    return 0


def main(argv=None) -> int:
    return cli_main(body, argv)


if __name__ == "__main__":
    sys.exit(main())
