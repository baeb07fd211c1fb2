"""``python -m eval ...``: the same as ``effvit-sam eval ...``."""

import logging
import sys

from .cli import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sys.exit(main())
