"""``python -m distill distill|finetune|cache-teacher|embed-mse|export-pretrained ...`` (also
run by torchrun -m)."""

from __future__ import annotations

import logging
import sys

from .cli import cache_teacher_main, distill_main, embed_mse_main, finetune_main
from .export import export_main

COMMANDS = {"distill": distill_main, "finetune": finetune_main,
            "cache-teacher": cache_teacher_main, "embed-mse": embed_mse_main,
            "export-pretrained": export_main}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m distill {{{'|'.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return int(COMMANDS[argv[0]](argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
