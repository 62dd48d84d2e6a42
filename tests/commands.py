"""`harness` commands run in the test's own process, as a user runs them: far cheaper than a fresh
interpreter each (the imports are paid once per test session). Tests that need a process of their own (a
signal, a resource limit, an environment variable read at import) start one instead."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]


def harness(*args, cwd: Path | str = ROOT) -> SimpleNamespace:
    """Exit code, stdout and stderr apart, like `subprocess.run(..., capture_output=True, text=True)`. An
    exception the command leaves unhandled is raised here, so a traceback cannot pass for a clean error."""
    from typer.testing import CliRunner

    from harness.cli import app

    with contextlib.chdir(cwd):
        r = CliRunner().invoke(app, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr)
