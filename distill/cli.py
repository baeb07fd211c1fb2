"""Thin entry points: ``effvit-sam distill | finetune | cache-teacher | embed-mse | make-shards |
make-eval-set`` (and ``python -m distill ...``).

They parse arguments, build a config and call the package; errors in what the user passed are
:class:`~effvit_sam.errors.UserError` (exit code 2, one line). Multi-GPU / multi-node runs use
the same commands under ``accelerate launch`` or ``torchrun`` (see the README).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from effvit_sam.errors import UserError

from .config import CONFIG_DIR, TEACHER_KINDS, TeacherConfig, load_config

log = logging.getLogger(__name__)
PHASE_COMMANDS = {1: "effvit-sam distill", 2: "effvit-sam finetune"}


def _train_parser(prog: str, what: str) -> argparse.ArgumentParser:
    recipes = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    parser = argparse.ArgumentParser(prog=prog, description=what)
    parser.add_argument("--config", required=True,
                        help=f"a YAML file or a packaged recipe name ({recipes})")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                        help="override config values, e.g. train.lr=1e-4 data.max_masks=8")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", default=None, metavar="CHECKPOINT|auto",
                       help="continue a run from its checkpoint.pt ('auto': run.out_dir's)")
    again.add_argument("--overwrite", action="store_true",
                       help="start again in a run.out_dir that holds a run, deleting its "
                       "checkpoint, metrics and pretrained/")
    return parser


def _train_main(phase: int, argv: list[str], what: str) -> int:
    from .run import run

    args = _train_parser(PHASE_COMMANDS[phase], what).parse_args(argv)
    cfg = load_config(args.config, args.set)
    if cfg.phase != phase:
        raise UserError(f"--config {args.config} is a phase-{cfg.phase} config; run it with "
                        f"'{PHASE_COMMANDS[cfg.phase]}'")
    out = run(cfg, resume=args.resume, overwrite=args.overwrite)
    log.info("phase %d finished: %s", phase, out)
    return 0


def distill_main(argv: list[str]) -> int:
    """Phase 1: ``effvit-sam distill --config smoke_phase1 [--set ...] [--resume auto |
    --overwrite]``."""
    return _train_main(1, argv, "phase 1: distil the image encoder")


def finetune_main(argv: list[str]) -> int:
    """Phase 2: ``effvit-sam finetune --config smoke_phase2 [--set ...] [--resume auto |
    --overwrite]``."""
    return _train_main(2, argv, "phase 2: fine-tune the whole model")


def cache_teacher_main(argv: list[str]) -> int:
    """``effvit-sam cache-teacher --shards 'sa1b/sa_{0..9}.tar' --out cache/ --kind sam
    --name vit_h --checkpoint sam_vit_h_4b8939.pth``. Under torchrun each rank caches its
    share of the shards."""
    import torch

    from .cache import cache_teacher, checked_shards
    from .teacher import build_teacher

    parser = argparse.ArgumentParser(prog="effvit-sam cache-teacher",
                                     description="write teacher embeddings (fp16) as shards")
    parser.add_argument("--shards", required=True, help="source SA-1B shards (brace pattern)")
    parser.add_argument("--out", required=True, help="output folder for the cache shards")
    parser.add_argument("--kind", choices=TEACHER_KINDS, default="sam")
    parser.add_argument("--name", default="vit_h",
                        help="vit_b/vit_l/vit_h, or an EfficientViT-SAM model name")
    parser.add_argument("--checkpoint", default=None,
                        help="teacher weights (file, or save_pretrained folder)")
    parser.add_argument("--random-init", action="store_true",
                        help="random teacher weights (smoke tests only)")
    parser.add_argument("--seed", type=int, default=0, help="seed of a random-init teacher")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.kind == "sam" and not args.checkpoint and not args.random_init:
        raise UserError(f"--kind sam needs --checkpoint (the SAM {args.name} weights file); "
                        "--random-init is for smoke runs only")
    _check_out_dir(args.out)
    shards = checked_shards(args.shards, "--shards")
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    device = args.device
    if device == "cuda" and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    teacher = build_teacher(TeacherConfig(kind=args.kind, name=args.name,
                                          checkpoint=args.checkpoint,
                                          random_init=args.random_init),
                            device=device, seed=args.seed)
    counts = cache_teacher(teacher, shards, args.out, batch_size=args.batch_size, rank=rank,
                           world_size=world)
    log.info("rank %d cached %d samples from %d shards (%d bad samples skipped) into %s",
             rank, counts["samples"], counts["shards"], counts["bad"], args.out)
    return 0


def embed_mse_main(argv: list[str]) -> int:
    """``effvit-sam embed-mse --shards held/sa_000000.tar --student runs/p1/pretrained
    --teacher-kind efficientvit --teacher-name tiny --teacher runs/teacher/pretrained``: the
    student-teacher embedding MSE on held-out SA-1B shards (phase 1's figure of merit).

    ``--student-random-init --seed S`` measures the student phase 1 starts from (a run with
    ``train.seed=S`` builds exactly these weights)."""
    import json

    import torch

    from effvit_sam import build_sam
    from effvit_sam.configs import get_config
    from effvit_sam.io import atomic_write

    from .cache import checked_shards
    from .config import ConfigError, resized
    from .evaluate import embedding_mse
    from .init import load_init
    from .sa1b import collate_sa1b, sa1b_dataset
    from .teacher import build_teacher

    parser = argparse.ArgumentParser(
        prog="effvit-sam embed-mse",
        description="student-teacher image-embedding MSE on (held-out) SA-1B shards")
    parser.add_argument("--shards", required=True, help="SA-1B shards (brace pattern)")
    parser.add_argument("--student-model", default="efficientvit-sam-tiny",
                        help="student variant (when --student is a weights file or absent)")
    student = parser.add_mutually_exclusive_group(required=True)
    student.add_argument("--student", help="student weights: save_pretrained folder or file")
    student.add_argument("--student-random-init", action="store_true",
                         help="the random student that a phase-1 run with train.seed=SEED "
                         "starts from")
    parser.add_argument("--student-depths", type=_depths, default=None,
                        help="per-stage encoder depths of --student-model (a recipe's "
                        "model.sizes: {encoder.depths: [...]}), e.g. 1,1,2,6,6")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher-kind", choices=TEACHER_KINDS, default="sam")
    parser.add_argument("--teacher-name", default="vit_h")
    parser.add_argument("--teacher", required=True, help="teacher weights (file or folder)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--output", help="also write the figure to this JSON file")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.max_images is not None and args.max_images < 1):
        parser.error("--batch-size and --max-images must be positive")

    if args.student_depths is not None and args.student and Path(args.student).is_dir():
        parser.error(f"--student-depths: --student {args.student} is a save_pretrained folder, "
                     "whose config.json gives the depths")
    spec = get_config(args.student_model)
    if args.student_depths is not None:
        try:
            spec = resized(spec, {"encoder.depths": args.student_depths})
        except ConfigError as err:
            parser.error(str(err).replace("model.sizes: ", "--student-depths: "))
    torch.manual_seed(args.seed)  # what the training engine does before building the student
    if args.student_random_init:
        model = build_sam(spec)
    elif Path(args.student).is_dir():
        from effvit_sam.build import from_pretrained

        model = from_pretrained(args.student)
    else:
        model = build_sam(spec)
        load_init(model, args.student, what="--student")
    if not Path(args.teacher).exists():
        raise UserError(f"--teacher {args.teacher}: no weights file or save_pretrained folder")
    teacher = build_teacher(TeacherConfig(kind=args.teacher_kind, name=args.teacher_name,
                                          checkpoint=args.teacher))
    dataset = sa1b_dataset(checked_shards(args.shards, "--shards"), encoder_size=model.encoder_size,
                           max_masks=1, keep_raw=True)
    samples = []
    for sample in dataset:
        if args.max_images is not None and len(samples) >= args.max_images:
            break
        samples.append(sample)
    batches = [collate_sa1b(samples[i: i + args.batch_size])
               for i in range(0, len(samples), args.batch_size)]
    mse = embedding_mse(model.image_encoder, teacher, batches)
    result = {"embedding_mse": mse, "num_images": len(samples), "shards": args.shards,
              "student": "random-init" if args.student_random_init else args.student,
              "seed": args.seed, "teacher": f"{args.teacher_kind}:{args.teacher_name}",
              "teacher_checkpoint": args.teacher}
    print(f"student-teacher embedding MSE over {len(samples)} images: {mse:.6g}")
    if args.output:
        text = json.dumps(result, indent=2) + "\n"
        atomic_write(args.output, lambda tmp: Path(tmp).write_text(text))
    return 0


def _check_out_dir(out: str) -> None:
    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"--out {out} is a file, not a folder")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _depths(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated integers, got {text!r}") from None


def _check_scene_args(seed: int, image_size: int) -> None:
    """``--seed`` and ``--image-size`` as the scene generator accepts them, or a UserError."""
    import numpy as np

    from .synthetic import scene_size

    if seed < 0:
        raise UserError(f"--seed must be >= 0 (a NumPy seed), got {seed}")
    try:  # the generator owns the smallest size it can draw a scene at
        scene_size(np.random.default_rng(0), image_size)
    except ValueError as err:
        raise UserError(f"--image-size {image_size} is too small: {err}") from None


CONVERT_SOURCES = ("--from-coco", "--from-lvis", "--from-masks")


def make_shards_main(argv: list[str]) -> int:
    """``effvit-sam make-shards --out DIR --num-shards N --images-per-shard M`` (made scenes), or
    ``--from-coco ANN --images DIR`` / ``--from-lvis`` / ``--from-masks DIR`` (your own data,
    :mod:`distill.convert`)."""
    from .synthetic_writers import write_sa1b_shards

    if any(a.split("=")[0] in CONVERT_SOURCES for a in argv):
        from .convert import convert_main

        return convert_main(argv)

    parser = argparse.ArgumentParser(
        prog="effvit-sam make-shards",
        description="Write synthetic scenes as SA-1B tar shards (sa_000000.tar, ...); with "
                    "--from-coco/--from-lvis/--from-masks, convert your own data instead.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-shards", type=_positive, required=True)
    parser.add_argument("--images-per-shard", type=_positive, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=512,
                        help="long side of each image in pixels (aspect ratio varies)")
    args = parser.parse_args(argv)
    _check_scene_args(args.seed, args.image_size)
    _check_out_dir(args.out)
    paths = write_sa1b_shards(args.out, num_shards=args.num_shards,
                              images_per_shard=args.images_per_shard, seed=args.seed,
                              image_size=args.image_size)
    print(f"wrote {len(paths)} shards: {paths[0].parent}/sa_{{000000..{len(paths) - 1:06d}}}.tar")
    return 0


def make_eval_set_main(argv: list[str]) -> int:
    """``effvit-sam make-eval-set --out DIR --num-images N [--format coco|lvis]``."""
    from .synthetic_writers import write_eval_set

    parser = argparse.ArgumentParser(
        prog="effvit-sam make-eval-set",
        description="Write a synthetic COCO- or LVIS-v1-format validation set.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-images", type=_positive, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=512,
                        help="long side of each image in pixels (aspect ratio varies)")
    parser.add_argument("--format", choices=("coco", "lvis"), default="coco")
    args = parser.parse_args(argv)
    _check_scene_args(args.seed, args.image_size)
    _check_out_dir(args.out)
    path = write_eval_set(args.out, num_images=args.num_images, seed=args.seed,
                          image_size=args.image_size, fmt=args.format)
    print(f"wrote {path} (images in {path.parent.parent / 'images'})")
    return 0
