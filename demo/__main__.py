"""``python -m demo``: the same as ``effvit-sam demo``."""

import logging
import sys

from .cli import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sys.exit(main())
