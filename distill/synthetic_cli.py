"""``effvit-sam make-shards`` and ``effvit-sam make-eval-set``: argument parsing only."""

from __future__ import annotations

import argparse

from .synthetic_writers import write_eval_set, write_sa1b_shards


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def make_shards_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="effvit-sam make-shards",
        description="Write synthetic scenes as SA-1B tar shards (sa_000000.tar, ...).")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-shards", type=_positive, required=True)
    parser.add_argument("--images-per-shard", type=_positive, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=_positive, default=512,
                        help="long side of each image in pixels (aspect ratio varies)")
    args = parser.parse_args(argv)
    paths = write_sa1b_shards(args.out, num_shards=args.num_shards,
                              images_per_shard=args.images_per_shard, seed=args.seed,
                              image_size=args.image_size)
    print(f"wrote {len(paths)} shards: {paths[0].parent}/sa_{{000000..{len(paths) - 1:06d}}}.tar")
    return 0


def make_eval_set_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="effvit-sam make-eval-set",
        description="Write a synthetic COCO- or LVIS-v1-format validation set.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-images", type=_positive, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=_positive, default=512,
                        help="long side of each image in pixels (aspect ratio varies)")
    parser.add_argument("--format", choices=("coco", "lvis"), default="coco")
    args = parser.parse_args(argv)
    path = write_eval_set(args.out, num_images=args.num_images, seed=args.seed,
                          image_size=args.image_size, fmt=args.format)
    print(f"wrote {path} (images in {path.parent.parent / 'images'})")
    return 0
