"""The one error convention of every command-line entry point.

Library code raises :class:`UserError` (or a subclass, such as
:class:`effvit_sam.checkpoint.CheckpointError`) for input the user can fix: a bad argument, a
missing or malformed file, a checkpoint of another variant, a device that is not there. A CLI run
through :func:`run_command` prints such an error as one line, ``PROG: error: MESSAGE``, and exits
with code 2 (argparse's own convention for usage errors); anything else is an internal error and
keeps its traceback. ``--debug`` on the command line, or ``EFFVIT_SAM_DEBUG=1`` in the
environment, shows the traceback of user errors too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

DEBUG_ENV = "EFFVIT_SAM_DEBUG"
USER_ERROR_EXIT = 2


class UserError(ValueError):
    """Input the user can fix; a CLI reports its message and exits with code 2."""


def debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_command(prog: str, main: Callable[[list[str]], int | None],
                argv: Sequence[str]) -> int:
    """``main(argv)`` (without ``--debug``) with :class:`UserError` turned into exit code 2."""
    debug = debug_requested(argv)
    args = [a for a in argv if a != "--debug"]
    try:
        return int(main(args) or 0)
    except UserError as err:
        if debug:
            raise
        message = str(err).strip() or type(err).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return USER_ERROR_EXIT
