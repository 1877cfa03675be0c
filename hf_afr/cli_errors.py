"""How command-line tools report failure: one line on stderr and a non-zero exit.

The traceback is kept for `--debug` (or `HF_AFR_DEBUG=1`). Shared by `hf-afr` and the scripts.
Imports nothing heavy, so that `--help` stays instant.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130

# Errors of the user's input or environment: their message is the whole story.
_USER_ERRORS = (ValueError, OSError, KeyError)


def one_line(err: BaseException) -> str:
    """The error's message on one line (whitespace collapsed); its type for unexpected errors."""
    message = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, _USER_ERRORS) or type(err).__name__ == "SafetensorError":
        return message
    return f"{type(err).__name__}: {message}"


def debug_requested(argv: list[str]) -> bool:
    """Whether `--debug` is among the arguments or `HF_AFR_DEBUG` is set."""
    return "--debug" in argv or os.environ.get("HF_AFR_DEBUG", "").lower() in ("1", "true", "yes")


def run_reporting_errors(prog: str, fn: Callable[[], T], debug: bool) -> T:
    """Run `fn`; on failure print `prog: error: <one line>` to stderr and exit non-zero.

    With `debug`, the exception propagates with its traceback instead.
    """
    try:
        return fn()
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as err:  # noqa: BLE001 - every failure becomes one readable line
        if debug:
            raise
        hint = "" if isinstance(err, _USER_ERRORS) else " (run with --debug for the traceback)"
        print(f"{prog}: error: {one_line(err)}{hint}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
