"""The prompt search's outputs, rebuilt at the end of every `evolve` (see :mod:`harness.search`):
`tables/search_generations.*`, `tables/search_trajectory.*`, `tables/search_lineage.*` and
`plots/search_trajectory.png`."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .core import canonical_json
from .search import Candidate, Generation, best_of

REPORT_TOP = 5          # prompts per generation in search_generations
LINEAGE_WINNERS = 3     # best prompts of the search whose ancestry is traced


def generations_frame(generations: Sequence[Generation], top: int = REPORT_TOP):
    import pandas as pd

    rows = []
    for gen in generations:
        for r, c in enumerate(gen.candidates[:top], start=1):
            rows.append({"generation": gen.index, "rank": r, "prompt": c.text, "fitness": c.fitness,
                         "ci_low": c.ci[0], "ci_high": c.ci[1], "n_seeds": c.n_seeds, "operator": c.operator,
                         "born": c.born, "elite": c.born < gen.index, "key": c.key})
    return pd.DataFrame(rows, columns=["generation", "rank", "prompt", "fitness", "ci_low", "ci_high", "n_seeds",
                                       "operator", "born", "elite", "key"]).astype({"fitness": float, "ci_low": float,
                                                                                     "ci_high": float})


def trajectory_frame(generations: Sequence[Generation], bounds: tuple[float, float] | None = None):
    """Best and mean fitness per generation; the mean's 95% interval (over candidates) is cut to `bounds`, the
    range the fitness can take (`search.fitness_bounds`), as each candidate's interval is."""
    import pandas as pd

    from .stats import mean_interval

    rows = []
    for gen in generations:
        fits = [c.fitness for c in gen.candidates if c.fitness is not None]
        best = gen.best
        lo, hi = mean_interval(fits, bounds=bounds)
        rows.append({"generation": gen.index, "best": best.fitness, "best_ci_low": best.ci[0],
                     "best_ci_high": best.ci[1], "mean": sum(fits) / len(fits) if fits else None,
                     "mean_ci_low": lo, "mean_ci_high": hi, "candidates": len(gen.candidates),
                     "images_used": gen.images_used, "best_prompt": best.text})
    return pd.DataFrame(rows).astype({c: float for c in ("best", "best_ci_low", "best_ci_high", "mean",
                                                         "mean_ci_low", "mean_ci_high")})


def lineage_frame(generations: Sequence[Generation], winners: int = LINEAGE_WINNERS):
    """The ancestry of the best prompts of the search, newest first (crossover children have two parents)."""
    import pandas as pd

    births: dict[str, list[Candidate]] = {}  # key -> each birth of that prompt, oldest first
    for gen in generations:
        for c in gen.candidates:
            if c.born == gen.index and all(b.born != c.born for b in births.get(c.key, [])):
                births.setdefault(c.key, []).append(c)

    def parent(key: str, child_born: int) -> Candidate | None:
        """The birth of `key` that a child born in generation `child_born` was made from: the latest
        before it (a prompt dropped and made again later has several births); generation 0's mutants
        are made from its initial prompts."""
        return next((c for c in reversed(births.get(key, []))
                     if c.born < child_born or (c.born == child_born == 0 and c.operator == "initial")), None)

    rows = []
    for r, winner in enumerate(best_of(generations, winners), start=1):
        queue: list[tuple[str, Candidate | None, int]] = [(winner.key, winner, 0)]
        seen = set()
        while queue:
            key, c, d = queue.pop(0)
            if (key, c.born if c else None) in seen:
                continue
            seen.add((key, c.born if c else None))
            if c is None:
                rows.append({"winner": r, "depth": d, "key": key, "prompt": None, "operator": "(not recorded)"})
                continue
            rows.append({"winner": r, "depth": d, "generation": c.born, "key": key, "prompt": c.text,
                         "operator": c.operator, "args": canonical_json(dict(c.args)),
                         "parents": " ".join(c.parents), "fitness": c.fitness, "ci_low": c.ci[0],
                         "ci_high": c.ci[1], "image_keys": " ".join(c.image_keys)})
            queue += [(p, parent(p, c.born), d + 1) for p in c.parents]
    cols = ["winner", "depth", "generation", "key", "prompt", "operator", "args", "parents", "fitness", "ci_low",
            "ci_high", "image_keys"]
    return pd.DataFrame(rows, columns=cols).astype({"fitness": float, "ci_low": float, "ci_high": float})


def plot_trajectory(traj, path: Path) -> Path:
    """Best and mean fitness per generation with 95% CI bars (matplotlib, Agg canvas)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = traj["generation"].to_numpy()
    for col, label, shift in (("best", "best candidate (CI over seeds)", -0.05),
                              ("mean", "population mean (CI over candidates)", 0.05)):
        y = traj[col].to_numpy(float)
        lo, hi = traj[f"{col}_ci_low"].to_numpy(float), traj[f"{col}_ci_high"].to_numpy(float)
        err = np.vstack([np.where(np.isnan(lo), 0, y - lo), np.where(np.isnan(hi), 0, hi - y)])
        ax.errorbar(x + shift, y, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness")
    ax.set_xticks(x)
    ax.legend(fontsize=8)
    ax.set_title("prompt search")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)
    return path


def write_search_report(run_dir: Path | str, generations: Sequence[Generation],
                        bounds: tuple[float, float] | None = None) -> list[Path]:
    """Write the search's tables and plot; `bounds` is the fitness's range (`search.fitness_bounds`)."""
    from .tables import write_table

    run_dir = Path(run_dir)
    if not generations:
        return []
    tables = run_dir / "tables"
    traj = trajectory_frame(generations, bounds)
    out = write_table(generations_frame(generations), tables, "search_generations")
    out += write_table(traj, tables, "search_trajectory")
    out += write_table(lineage_frame(generations), tables, "search_lineage")
    out.append(plot_trajectory(traj, run_dir / "plots" / "search_trajectory.png"))
    return out
