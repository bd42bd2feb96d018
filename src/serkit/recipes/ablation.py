"""Helpers shared by the ablation runners (``serkit ablate-*``): table cells and comma-list options."""

from __future__ import annotations


def percent_mean_std(mean: dict, std: dict, key: str, missing: str = "-") -> str:
    """``"75.33 ± 5.62"`` (fractions shown in %) for ``key``; ``missing`` when absent or NaN."""
    if key not in mean or mean[key] != mean[key]:
        return missing
    return f"{100 * mean[key]:.2f} ± {100 * std.get(key, 0.0):.2f}"


def split_list(s: str | None, default) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; ``default`` (copied) when ``s`` is empty."""
    return [x.strip() for x in s.split(",") if x.strip()] if s else list(default)
