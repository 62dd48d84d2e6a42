"""Expansion throughput: `python -m harness.bench_grammar` prints prompts/s.

A six-factor template (10 x 8 x 6 x 5 x 4 x 3 = 28,800 prompts) is expanded
exhaustively and sampled; figures are best of three runs.
"""

from __future__ import annotations

import random
import time

from .expand import compile_template

TEMPLATE = ("{a|an old|a new|a red|a blue|a small|a large|a shiny|a rusty|a tiny} "
            "{car|truck|bike|boat|plane|train|bus|tram} on a {street|track|dirt road|bridge|beach|hill}, "
            "{photo|35mm photograph|oil painting|watercolor|3d render}, "
            "{golden hour|studio lighting|soft light|neon lighting}{, by greg rutkowski|, by ian mcque|}")


def run(repeats: int = 3) -> dict:
    tpl = compile_template(TEMPLATE)
    n = tpl.count()
    best_expand = min(_time(lambda: sum(1 for _ in tpl.expand())) for _ in range(repeats))
    best_sample = min(_time(lambda: tpl.sample(10_000, random.Random(0), replace=True)) for _ in range(repeats))
    return {"prompts": n, "factors": len(tpl.factors),
            "exhaustive_per_s": n / best_expand, "sample_per_s": 10_000 / best_sample}


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    r = run()
    print(f"template: {r['factors']} factors, {r['prompts']} prompts")
    print(f"exhaustive: {r['exhaustive_per_s']:,.0f} prompts/s")
    print(f"sampled:    {r['sample_per_s']:,.0f} prompts/s")
