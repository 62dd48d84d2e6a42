"""Statistics for prompt studies: summaries, paired comparisons, rankings.

Input is the tidy per-image table (one row per image) with factor columns
``f.<factor>``, ``checkpoint``, ``seed``, generation parameters, metric columns
``m.<metric>`` (NaN = unscored) and a boolean ``healthy`` column.

The design behind :func:`paired_compare`:

* **Pairs.** Two images form a pair when they differ only in the compared
  factor: same seed, same other factor choices, same checkpoint and parameters
  (``pair_on``). The difference ``d = level - baseline`` removes the seed's and
  the prompt's own effect from the comparison.
* **Clusters.** Pairs of one prompt condition (the other factors, negative
  prompt and init image) belong to one cluster, whatever their seed and
  generation settings (checkpoint, stage, mode, strength, steps...): seeds of
  one prompt, and one prompt and seed at two strengths, are not independent
  evidence, so uncertainty is computed over clusters (a factor only a later
  stage's prompt has does not split a stage image from its parent's cluster).
* **Interval.** Two-stage cluster bootstrap of the mean pair difference:
  resample clusters with replacement, then resample the seeds within each drawn
  cluster with replacement; percentile interval. Two caveats: a percentile
  interval over few clusters (under ~15-20) is too narrow, and the second stage
  counts seed-to-seed noise twice, so when that noise dominates the cluster
  effect the interval is somewhat conservative (Davison & Hinkley 1997, 3.8).
* **Test.** Two-sided Wilcoxon signed-rank test on the per-cluster mean
  differences (zeros dropped). With n clusters the smallest attainable exact
  two-sided p is 2 / 2**n, so under 6 clusters it can never reach 0.05.
* **Multiplicity.** Holm's step-down adjustment across the non-baseline levels.

Nothing here touches torch; randomness comes in as a ``numpy.random.Generator``.

Modules: :mod:`.table` (reading the table's columns), :mod:`.intervals` (t and Wilson intervals, cluster
bootstrap, Wilcoxon, Holm), :mod:`.summary` (:func:`summarize`), :mod:`.results` (the result
records and their rendering), :mod:`.compare` (:func:`paired_compare`, :func:`default_pair_on`) and
:mod:`.drawn` (metrics against settings `[randomize]` drew: rank correlation and slope over draws).
"""

from .compare import default_pair_on, paired_compare
from .intervals import (
    MIN_CLUSTERS_FOR_CI,
    MIN_CLUSTERS_FOR_TEST,
    cluster_bootstrap_ci,
    cluster_bootstrap_means,
    holm,
    mean_interval,
    t_interval,
)
from .results import Comparison, LevelResult, RankResult
from .summary import summarize
from .table import DESIGN_COLUMNS, PARAM_COLUMNS

__all__ = [
    "DESIGN_COLUMNS",
    "MIN_CLUSTERS_FOR_CI",
    "MIN_CLUSTERS_FOR_TEST",
    "PARAM_COLUMNS",
    "Comparison",
    "LevelResult",
    "RankResult",
    "cluster_bootstrap_ci",
    "cluster_bootstrap_means",
    "default_pair_on",
    "holm",
    "mean_interval",
    "paired_compare",
    "summarize",
    "t_interval",
]
