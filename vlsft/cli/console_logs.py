"""vlsft's log messages on the console of a `vlsft train` run.

The library logs through `accelerate.logging` (a message is emitted on the main process only unless it says
otherwise) and, like any library, configures no handler. A command line is where a user reads its notes (a run that
differs from its layout, a SIGTERM stop, rows skipped, the checkpoint a run resumes from), so the entry points show
vlsft's INFO and WARNING messages on stderr.
"""

from __future__ import annotations

import logging
import sys


class _ConsoleHandler(logging.StreamHandler):
    """vlsft's handler (told apart from any other, so it is added once), writing to `sys.stderr` as it is when a
    message comes (a caller, or pytest, may swap it after the handler was added)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def show_vlsft_logs(level: int = logging.INFO) -> None:
    """Show the `vlsft` loggers' messages at `level` and above on stderr, as `vlsft: <message>`."""
    logger = logging.getLogger("vlsft")
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    if not any(isinstance(handler, _ConsoleHandler) for handler in logger.handlers):
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter("vlsft: %(message)s"))
        logger.addHandler(handler)
