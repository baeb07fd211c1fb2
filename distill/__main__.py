"""``python -m distill COMMAND ...`` (also run by ``torchrun -m distill``): the distillation
commands of ``effvit-sam``, with its error convention (a user error exits with code 2 and one
line ``python -m distill COMMAND: error: MESSAGE``; ``--debug`` shows the traceback)."""

from __future__ import annotations

import logging
import sys

from effvit_sam.errors import run_command

from .cli import (
    cache_teacher_main,
    distill_main,
    embed_mse_main,
    finetune_main,
    make_eval_set_main,
    make_shards_main,
)
from .export import export_main

COMMANDS = {"distill": distill_main, "finetune": finetune_main,
            "cache-teacher": cache_teacher_main, "embed-mse": embed_mse_main,
            "make-shards": make_shards_main, "make-eval-set": make_eval_set_main,
            "export-pretrained": export_main}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m distill {{{'|'.join(COMMANDS)}}} ...", file=sys.stderr)
        if argv:
            print(f"python -m distill: error: unknown command {argv[0]!r}; commands: "
                  f"{', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run_command(f"python -m distill {argv[0]}", COMMANDS[argv[0]], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
