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
        if (options or {}).get("address"):
            check_address(options["address"])


def check_address(address: str, timeout_s: float = 10.0) -> None:
    """A SettingsError for a Ray cluster address that is malformed or where nothing answers within
    `timeout_s`: Ray itself retries an unreachable head for many minutes, with the run folder locked.
    `auto` (the cluster this machine belongs to) is Ray's to find."""
    import socket

    from ..core import SettingsError

    if address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")  # an IPv6 address in brackets
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise SettingsError(f"--address {address!r}: expected HOST:PORT of a Ray cluster's head (e.g. "
                            "10.0.0.5:6379), ray://HOST:PORT for Ray Client, or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        raise SettingsError(f"--address {address}: no Ray cluster answered there within {timeout_s:g} s ({why}); "
                            "check the head node's address and port (`ray status` on the head prints them)") from None
