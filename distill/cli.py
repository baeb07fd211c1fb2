"""Thin entry points: ``effvit-sam cache-teacher | distill | finetune`` (and ``python -m distill``).

They parse arguments, build a config and call the package. Multi-GPU / multi-node runs use the
same commands under ``accelerate launch`` or ``torchrun`` (see the README).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .config import CONFIG_DIR, TEACHER_KINDS, TeacherConfig, load_config

log = logging.getLogger(__name__)


def _train_parser(prog: str, what: str) -> argparse.ArgumentParser:
    recipes = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    parser = argparse.ArgumentParser(prog=prog, description=what)
    parser.add_argument("--config", required=True,
                        help=f"a YAML file or a packaged recipe name ({recipes})")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                        help="override config values, e.g. train.lr=1e-4 data.max_masks=8")
    parser.add_argument("--resume", default=None, metavar="CHECKPOINT|auto",
                        help="continue a run from its checkpoint.pt ('auto': run.out_dir's "
                        "if it exists, else start fresh)")
    return parser


def _resume_path(resume: str | None, out_dir: str) -> str | None:
    if resume is None:
        return None
    path = Path(out_dir) / "checkpoint.pt" if resume == "auto" else Path(resume)
    if resume == "auto" and not path.is_file():
        log.info("no %s yet: starting a fresh run", path)
        return None
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}")
    return str(path)


def distill_main(argv: list[str]) -> int:
    """Phase 1: ``effvit-sam distill --config smoke_phase1 [--set ...] [--resume auto]``."""
    from .phase1 import run_phase1

    args = _train_parser("effvit-sam distill", "phase 1: distil the image encoder").parse_args(argv)
    cfg = load_config(args.config, args.set)
    out = run_phase1(cfg, resume=_resume_path(args.resume, cfg.run.out_dir))
    log.info("phase 1 finished: %s", out)
    return 0


def finetune_main(argv: list[str]) -> int:
    """Phase 2: ``effvit-sam finetune --config smoke_phase2 [--set ...] [--resume auto]``."""
    from .phase2 import run_phase2

    args = _train_parser("effvit-sam finetune",
                         "phase 2: fine-tune the whole model").parse_args(argv)
    cfg = load_config(args.config, args.set)
    out = run_phase2(cfg, resume=_resume_path(args.resume, cfg.run.out_dir))
    log.info("phase 2 finished: %s", out)
    return 0


def cache_teacher_main(argv: list[str]) -> int:
    """``effvit-sam cache-teacher --shards 'sa1b/sa_{0..9}.tar' --out cache/ --kind sam
    --name vit_h --checkpoint sam_vit_h_4b8939.pth``. Under torchrun each rank caches its
    share of the shards."""
    import torch

    from .cache import cache_teacher, expand_urls
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
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    device = args.device
    if device == "cuda" and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    teacher = build_teacher(TeacherConfig(kind=args.kind, name=args.name,
                                          checkpoint=args.checkpoint,
                                          random_init=args.random_init),
                            device=device, seed=args.seed)
    shards = expand_urls(args.shards)
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
    from effvit_sam.checkpoint import atomic_write

    from .cache import expand_urls
    from .phase1 import embedding_mse
    from .phase2 import load_init
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

    torch.manual_seed(args.seed)  # what the training engine does before building the student
    if args.student_random_init:
        model = build_sam(args.student_model)
    elif Path(args.student).is_dir():
        from effvit_sam.checkpoint import from_pretrained

        model = from_pretrained(args.student)
    else:
        model = build_sam(args.student_model)
        load_init(model, args.student)
    teacher = build_teacher(TeacherConfig(kind=args.teacher_kind, name=args.teacher_name,
                                          checkpoint=args.teacher))
    dataset = sa1b_dataset(expand_urls(args.shards), encoder_size=model.encoder_size,
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
