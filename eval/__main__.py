"""``python -m eval ...``: the same as ``effvit-sam eval ...``, with the same error convention
(:func:`effvit_sam.errors.run_command`: bad input exits with code 2 and one line)."""

import logging
import sys

from effvit_sam.errors import run_command

from .cli import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sys.exit(run_command("python -m eval", main, sys.argv[1:]))
