"""Expansion throughput: `python -m harness.bench_grammar` prints prompts/s.

A six-factor template (10 x 8 x 6 x 5 x 4 x 3 = 28,800 prompts) is expanded
exhaustively and sampled (--samples prompts, with replacement); figures are the
best of --repeats runs.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from .expand import compile_template

TEMPLATE = ("{a|an old|a new|a red|a blue|a small|a large|a shiny|a rusty|a tiny} "
            "{car|truck|bike|boat|plane|train|bus|tram} on a {street|track|dirt road|bridge|beach|hill}, "
            "{photo|35mm photograph|oil painting|watercolor|3d render}, "
            "{golden hour|studio lighting|soft light|neon lighting}{, by greg rutkowski|, by ian mcque|}")


def run(repeats: int = 3, samples: int = 10_000) -> dict:
    tpl = compile_template(TEMPLATE)
    n = tpl.count()
    best_expand = min(_time(lambda: sum(1 for _ in tpl.expand())) for _ in range(repeats))
    best_sample = min(_time(lambda: tpl.sample(samples, random.Random(0), replace=True)) for _ in range(repeats))
    return {"prompts": n, "factors": len(tpl.factors), "samples": samples,
            "exhaustive_per_s": n / best_expand, "sample_per_s": samples / best_sample}


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None, out=print) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.bench_grammar", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="runs of each measurement; the best is printed (default 3)")
    p.add_argument("--samples", type=int, default=10_000,
                   help="prompts drawn (with replacement) in the sampling measurement (default 10000)")
    a = p.parse_args(argv)
    for name in ("repeats", "samples"):
        if getattr(a, name) < 1:
            p.error(f"--{name} {getattr(a, name)}: expected at least 1")
    r = run(a.repeats, a.samples)
    out(f"template: {r['factors']} factors, {r['prompts']} prompts; best of {a.repeats} run(s)")
    out(f"exhaustive: {r['exhaustive_per_s']:,.0f} prompts/s")
    out(f"sampled:    {r['sample_per_s']:,.0f} prompts/s ({r['samples']:,} drawn)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
