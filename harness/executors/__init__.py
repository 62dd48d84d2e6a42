"""Executors run a plan's pending jobs: `local` (in-process, the default) and
`ray` (a pool of Ray actors). Both use the same grouping and batching, write the
same images to the same run folder, and only the driver writes the ledger."""

EXECUTORS = ("local", "ray")


def check_executor(name: str, options: dict | None = None) -> None:
    """A SettingsError (before any run folder is touched) for an unknown executor, a missing Ray, or
    executor options (Ray's workers, address, GPUs per worker) given to the local executor."""
    from ..core import SettingsError

    if name not in EXECUTORS:
        raise SettingsError(f"executor {name!r}: expected one of {', '.join(EXECUTORS)}")
    if name == "local" and options:
        raise SettingsError(f"executor options {', '.join(sorted(options))} need executor 'ray' (the local "
                            "executor runs in this process on the device --device names); drop them or "
                            "pass --executor ray")
    if name == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise SettingsError("executor 'ray' needs Ray: pip install 'harness[ray]'") from None
