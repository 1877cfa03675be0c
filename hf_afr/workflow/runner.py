"""Running a script's `main` the way a command-line user expects: one line per error.

`python scripts/finetune.py ... --debug` (or `HF_AFR_DEBUG=1`) shows the traceback instead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..cli_errors import debug_requested, run_reporting_errors
from ..distributed import end_process_group
from .outputs import forget_outputs, remove_empty_outputs


def run_script(
    prog: str, main: Callable[[list[str]], Any], argv: Sequence[str] | None = None
) -> int:
    """Call `main(argv)` (without `--debug`); print a failure as one line, return the exit code.

    After a failure, the output folders the run created and left empty are removed. After a
    successful distributed run (`torchrun`, `accelerate launch`), the process group is destroyed.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [arg for arg in argv if arg != "--debug"]
    try:
        run_reporting_errors(prog, lambda: main(argv), debug)
    except SystemExit as exit_:
        code = exit_.code
        code = code if isinstance(code, int) else 0 if code is None else 1
        if code:  # failed or interrupted: no empty output folder is left behind
            remove_empty_outputs()
        forget_outputs()
        return code
    except BaseException:  # --debug: the traceback, after the same clean-up
        remove_empty_outputs()
        raise
    forget_outputs()
    end_process_group()
    return 0
