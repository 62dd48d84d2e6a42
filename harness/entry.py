"""The `harness` command's entry point: the signals first, then the command line (`harness.cli`).

SIGTERM (a batch scheduler's time limit, `timeout`, `docker stop`, `kill`) stops a command the way Ctrl-C
does: finished batches are written and recorded, one line says so, and the exit code is 143. A signal
that comes while the command line is still being imported is one line too, not a traceback.
"""

from __future__ import annotations

import signal
import sys


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be, so every place that stops cleanly on
    Ctrl-C stops cleanly on it too."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main() -> None:
    try:
        signal.signal(signal.SIGTERM, _terminate)
        from . import cli
    except KeyboardInterrupt as exc:
        code = 143 if isinstance(exc, Terminated) else 130
        print("interrupted before the command began; nothing was done", file=sys.stderr)
        sys.exit(code)
    cli.main()
