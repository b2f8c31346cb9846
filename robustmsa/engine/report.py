"""Human-readable tables of results records (what ``robustmsa eval`` prints)."""

from __future__ import annotations

import math
from typing import Any, Mapping

__all__ = ["eval_table", "format_value"]


def format_value(stats: Mapping[str, float], signed: bool = False) -> str:
    """``mean`` or ``mean ± std`` (when over several seeds), 4 decimals; ``nan`` stays visible."""
    mean, std, n = stats["mean"], stats["std"], stats.get("n", 1)
    if math.isnan(mean):
        return "nan"
    text = f"{mean:+.4f}" if signed else f"{mean:.4f}"
    return f"{text} ± {std:.4f}" if n > 1 else text


def eval_table(record: Mapping[str, Any]):
    """A rich table: metric, direction, clean, corrupted, difference."""
    from rich.table import Table

    config = record["config"]
    corruption = config["corruption"]
    seeds = config["seeds"]
    cached = sum(r["from_cache"] for r in record["per_seed"])
    title = (f"{config['method']} on {config['dataset']['name']}: clean vs {corruption['spec']}@{corruption['severity']:g} "
             f"({len(seeds)} seed{'s' if len(seeds) > 1 else ''}, {cached} from cache)")
    table = Table("metric", "", "clean", f"{corruption['spec']}@{corruption['severity']:g}", "difference", title=title)
    results = record["results"]
    for name, higher in record["higher_is_better"].items():
        table.add_row(name, "↑" if higher else "↓", format_value(results["clean"][name]),
                      format_value(results["corrupted"][name]), format_value(results["delta"][name], signed=True))
    return table
