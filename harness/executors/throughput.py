"""Throughput against Ray worker count: `python -m harness.executors.throughput`.

Runs one plan (the tiny model, 256 px, 10 steps) with the local executor and
with the ray executor at 1..N workers into fresh run folders, and prints a
markdown table of images/s. Ray's start-up is outside the timed part.
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

    import ray

    from ..run import run_experiment

    work = Path(tempfile.mkdtemp(prefix="harness-throughput-"))
    try:
        (work / "exp.toml").write_text(EXP.format(seeds=a.seeds))
        ray.init(num_cpus=max(a.workers, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
        rows = []
        runs = [("local", 0)] + [("ray", n) for n in range(1, a.workers + 1)]
        for executor, n in runs:
            t0 = time.perf_counter()
            r = run_experiment(work / "exp.toml", out=work / f"{executor}{n}", progress=False, executor=executor,
                               executor_options=dict(workers=n) if executor == "ray" else None,
                               log=lambda m: None)
            seconds = time.perf_counter() - t0
            rows.append((executor if executor == "local" else f"ray, {n} worker{'s' * (n > 1)}", r.generated,
                         seconds, r.generated / seconds))
        print("| executor | images | seconds | images/s |\n|---|---:|---:|---:|")
        for name, n, s, rate in rows:
            print(f"| {name} | {n} | {s:.1f} | {rate:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
