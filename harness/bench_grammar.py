"""Expansion throughput: `python -m harness.bench_grammar` prints prompts/s.

A six-factor template (10 x 8 x 6 x 5 x 4 x 3 = 28,800 prompts) is expanded
exhaustively and sampled (--samples prompts, with replacement); a template
over a wildcard file of --wildcard-lines lines (written to a temporary folder)
is compiled, counted and sampled. Figures are the best of --repeats runs.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from .expand import compile_template
from .wildcards import WildcardLibrary

TEMPLATE = ("{a|an old|a new|a red|a blue|a small|a large|a shiny|a rusty|a tiny} "
            "{car|truck|bike|boat|plane|train|bus|tram} on a {street|track|dirt road|bridge|beach|hill}, "
            "{photo|35mm photograph|oil painting|watercolor|3d render}, "
            "{golden hour|studio lighting|soft light|neon lighting}{, by greg rutkowski|, by ian mcque|}")


WILDCARD_TEMPLATE = "a __things__ in the {rain|snow}"
WILDCARD_SAMPLES = 100


def wildcard_lines(n: int, rng: random.Random) -> list[str]:
    """`n` distinct lines of plain words, as a wildcard collection of subjects or artists is."""
    words = ("red", "old", "tiny", "vast", "dark", "soft", "neon", "misty", "ancient", "glass", "stone", "paper")
    return [f"{' '.join(rng.sample(words, 3))} thing number {i}" for i in range(n)]


def run(repeats: int = 3, samples: int = 10_000, lines: int = 20_000) -> dict:
    tpl = compile_template(TEMPLATE)
    n = tpl.count()
    # each run on a template compiled afresh: the first expansion of a template also builds its language
    best_expand = min(_time(lambda t: sum(1 for _ in t.expand())) for _ in range(repeats))
    best_sample = min(_time(lambda t: t.sample(samples, random.Random(0), replace=True)) for _ in range(repeats))
    return {"prompts": n, "factors": len(tpl.factors), "samples": samples,
            "exhaustive_per_s": n / best_expand, "sample_per_s": samples / best_sample,
            "lines": lines, **_wildcard(repeats, lines)}


def _wildcard(repeats: int, lines: int) -> dict:
    """Seconds to compile, count and sample WILDCARD_TEMPLATE over a wildcard file of `lines` lines."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "things.txt").write_text("\n".join(wildcard_lines(lines, random.Random(0))) + "\n",
                                                 encoding="utf-8")
        figures: dict[str, list[float]] = {"compile_s": [], "count_s": [], "wildcard_sample_s": []}
        for _ in range(repeats):
            t0 = time.perf_counter()
            tpl = compile_template(WILDCARD_TEMPLATE, library=WildcardLibrary([Path(folder)]))
            t1 = time.perf_counter()
            assert tpl.count() == 2 * lines
            t2 = time.perf_counter()
            tpl.sample(min(WILDCARD_SAMPLES, 2 * lines), random.Random(0))
            t3 = time.perf_counter()
            for key, seconds in zip(figures, (t1 - t0, t2 - t1, t3 - t2)):
                figures[key].append(seconds)
    return {key: min(values) for key, values in figures.items()}


def _time(fn) -> float:
    """Seconds `fn` takes on TEMPLATE compiled afresh (the compiling not counted)."""
    tpl = compile_template(TEMPLATE)
    t0 = time.perf_counter()
    fn(tpl)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None, out=print) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.bench_grammar", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="runs of each measurement; the best is printed (default 3)")
    p.add_argument("--samples", type=int, default=10_000,
                   help="prompts drawn (with replacement) in the sampling measurement (default 10000)")
    p.add_argument("--wildcard-lines", type=int, default=20_000,
                   help="lines of the wildcard file in the wildcard measurement (default 20000)")
    a = p.parse_args(argv)
    for name in ("repeats", "samples", "wildcard_lines"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(a, name)}: expected at least 1")
    r = run(a.repeats, a.samples, a.wildcard_lines)
    out(f"template: {r['factors']} factors, {r['prompts']} prompts; best of {a.repeats} run(s)")
    out(f"exhaustive: {r['exhaustive_per_s']:,.0f} prompts/s")
    out(f"sampled:    {r['sample_per_s']:,.0f} prompts/s ({r['samples']:,} drawn)")
    out(f"wildcard of {r['lines']:,} lines ({WILDCARD_TEMPLATE!r}): compiled in {r['compile_s']:.3f} s "
        f"({r['lines'] / r['compile_s']:,.0f} lines/s), counted in {r['count_s']:.3f} s, "
        f"{min(WILDCARD_SAMPLES, 2 * r['lines'])} distinct prompts sampled in {r['wildcard_sample_s']:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
