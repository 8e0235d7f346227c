"""Results in the paper's layout (Tables 1, 4 and 5) and as JSON.

Tables 4 and 5 give one row per dataset with AP, AR_S, AR_M, AR_L and AR; Table 1 gives AR
only, one column per dataset. The paper prints percentages with one decimal (AR 0.305 -> 30.5);
undefined values (NaN: no ground truth in that range) print as "-". JSON keeps fractions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sohes_hf.evaluation.coco_eval import EvaluationResult
from sohes_hf.evaluation.hierarchy_metrics import DEPTH_LEVELS, HierarchyMetrics

TABLE_COLUMNS: tuple[str, ...] = ("AP", "AR_S", "AR_M", "AR_L", "AR")


def format_percent(value: float) -> str:
    """A fraction as the paper prints it: x100 with one decimal; "-" when undefined (NaN)."""
    return "-" if math.isnan(value) else f"{100.0 * value:.1f}"


def format_results_table(results: Mapping[str, EvaluationResult], row_header: str = "Dataset") -> str:
    """One row per dataset with AP, AR_S, AR_M, AR_L, AR x100 (paper Tables 4 and 5)."""
    if not results:
        raise ValueError("results: need at least one dataset")
    width = max(len(row_header), *(len(name) for name in results))
    lines = [f"{row_header:<{width}}" + "".join(f"{column:>8}" for column in TABLE_COLUMNS)]
    for name, result in results.items():
        metrics = result.metrics()
        lines.append(f"{name:<{width}}" + "".join(f"{format_percent(metrics[c]):>8}" for c in TABLE_COLUMNS))
    return "\n".join(lines)


def format_ar_row(results: Mapping[str, EvaluationResult], row_name: str = "AR") -> str:
    """AR x100 with one column per dataset (paper Table 1)."""
    if not results:
        raise ValueError("results: need at least one dataset")
    widths = [max(8, len(name) + 2) for name in results]
    header = " " * len(row_name) + "".join(f"{n:>{w}}" for n, w in zip(results, widths, strict=True))
    values = "".join(f"{format_percent(r.ar):>{w}}" for r, w in zip(results.values(), widths, strict=True))
    return f"{header}\n{row_name}{values}"


def results_to_json(results: Mapping[str, EvaluationResult], **metadata: Any) -> dict[str, Any]:
    """``{**metadata, "datasets": {name: EvaluationResult.to_dict()}}``: fractions, None if undefined."""
    return {**metadata, "datasets": {name: result.to_dict() for name, result in results.items()}}


def format_hierarchy_table(metrics: Mapping[str, HierarchyMetrics], row_header: str = "Dataset") -> str:
    """One row per dataset: AR per depth level and parent-link precision/recall, x100."""
    if not metrics:
        raise ValueError("metrics: need at least one dataset")
    columns = [f"AR_{name}" for name, _, _ in DEPTH_LEVELS] + ["link_P", "link_R"]
    width = max(len(row_header), *(len(name) for name in metrics))
    lines = [f"{row_header:<{width}}" + "".join(f"{column:>12}" for column in columns)]
    for name, entry in metrics.items():
        values = [entry.ar_per_depth[level].ar if level in entry.ar_per_depth else math.nan
                  for level, _, _ in DEPTH_LEVELS]  # fmt: skip
        values += [entry.links.precision, entry.links.recall]
        lines.append(f"{name:<{width}}" + "".join(f"{format_percent(v):>12}" for v in values))
    return "\n".join(lines)
