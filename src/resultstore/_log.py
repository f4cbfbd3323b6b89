"""Debug logging that costs nothing, not even ``import logging``, until someone listens.

A program that never imported :mod:`logging` has configured no handler, so a debug
record would be dropped anyway: resultstore then skips it instead of importing
logging (a few milliseconds of every command's start-up). Once anything imports
logging (an application, pytest, ``resultstore --debug``), records go to the
standard loggers as usual, under the names given here.
"""

from __future__ import annotations

import sys

__all__ = ["debug"]


def debug(name: str, message: str, *args: object) -> None:
    """``logging.getLogger(name).debug(message, *args)``, if logging is in use."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger(name).debug(message, *args)
