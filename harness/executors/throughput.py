"""Throughput against Ray worker count: `python -m harness.executors.throughput`.

Runs one plan (the tiny model, 256 px, 10 steps) with the local executor and
with the ray executor at 1..N workers into fresh run folders, and prints a
markdown table of images/s. Ray's start-up is outside the timed part, and so
is a warm-up run of each executor (the model built and cached on disk, modules
imported, Ray's worker processes started once), so no row pays for a cold
start; every timed run still loads the model once per worker, as a real run does.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

EXP = """
name = "throughput"
prompt = "a {{red|blue|green|yellow}} {{circle|square}} on a white background"
seeds = {{ count = {seeds} }}
checkpoints = ["tiny"]
steps = 10
width = 256
height = 256
batch_size = 4
"""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2, help="largest Ray worker count")
    p.add_argument("--seeds", type=int, default=4)
    a = p.parse_args(argv)
    import os

    from ..core import SettingsError
    from . import check_executor

    try:
        check_executor("ray")
    except SettingsError as exc:
        p.error(f"this script compares the local and ray executors: {exc}")
    if a.workers < 1 or a.seeds < 1:
        p.error(f"--workers and --seeds: expected at least 1, got {a.workers} and {a.seeds}")
    import ray

    from ..run import run_experiment

    work = Path(tempfile.mkdtemp(prefix="harness-throughput-"))
    try:
        (work / "exp.toml").write_text(EXP.format(seeds=a.seeds))
        (work / "warm.toml").write_text(EXP.format(seeds=1))
        ray.init(num_cpus=max(a.workers, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)

        def timed(executor: str, n: int, exp: str, out: str):
            t0 = time.perf_counter()
            r = run_experiment(work / exp, out=work / out, progress=False, executor=executor,
                               executor_options=dict(workers=n) if executor == "ray" else None,
                               log=lambda m: None)
            return r, time.perf_counter() - t0

        timed("local", 0, "warm.toml", "warm-local")
        timed("ray", a.workers, "warm.toml", "warm-ray")
        rows = []
        for executor, n in [("local", 0)] + [("ray", n) for n in range(1, a.workers + 1)]:
            r, seconds = timed(executor, n, "exp.toml", f"{executor}{n}")
            rows.append((executor if executor == "local" else f"ray, {n} worker{'s' * (n > 1)}", r.generated,
                         seconds, r.generated / seconds))
        print("| executor | images | seconds | images/s |\n|---|---:|---:|---:|")
        for name, n, s, rate in rows:
            print(f"| {name} | {n} | {s:.1f} | {rate:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
