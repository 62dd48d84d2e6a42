"""Metrics: one file per metric, a registry mapping names to them.

    from harness.metrics import get_metric, Item
    metric = get_metric("clip_score", model="tiny")       # or parse_metric_spec("clip_score:model=tiny")
    scores = metric.score([Item(key, path, prompt="a red fox")])

Every metric returns one `harness.core.Score` per item, with `Score.metric`
set to the metric's id (name plus the options that change values, e.g.
`clip_score[model=ViT-L-14,pretrained=openai,scale=100,clamp=image]`), and NaN
with `detail["reason"]` for an item it cannot score. Importing this package is
cheap: torch, open_clip and OpenCV load only when a metric first scores.
"""

from harness.metrics.base import (
    Item,
    Metric,
    MetricContractError,
    MetricInfo,
    MetricUnavailable,
    Option,
    get_metric,
    list_metrics,
    metric_from_spec,
    metric_options,
    register,
)
from harness.metrics.spec import parse_metric_spec

# Importing a metric module registers it.
from harness.metrics import clip_directional, clip_image_similarity, clip_score, health, watermark  # noqa: E402,F401

__all__ = [
    "Item", "Metric", "MetricContractError", "MetricInfo", "MetricUnavailable", "Option", "get_metric", "list_metrics",
    "metric_from_spec", "metric_options", "parse_metric_spec", "register",
]
from harness.metrics import toy_oracle  # noqa: E402,F401

# User metrics: modules named in HARNESS_PLUGINS (comma-separated) are imported
# here, so a metric they register works in every command (eval, run, evolve).
import importlib as _importlib  # noqa: E402
import os as _os  # noqa: E402

for _name in filter(None, (m.strip() for m in _os.environ.get("HARNESS_PLUGINS", "").split(","))):
    try:
        _importlib.import_module(_name)
    except ImportError as _exc:
        raise ImportError(f"HARNESS_PLUGINS names {_name!r}, which cannot be imported ({_exc}); a plugin must be "
                          "importable: installed, or a module in a folder on PYTHONPATH") from _exc
    except Exception as _exc:  # a plugin's own error (syntax, a metric name taken): named the same way
        raise ImportError(f"HARNESS_PLUGINS names {_name!r}, which failed while importing: "
                          f"{type(_exc).__name__}: {_exc}; fix the plugin or leave it out of HARNESS_PLUGINS") from _exc
