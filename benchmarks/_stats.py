"""Statistics shared by the benchmarks (run as scripts: ``python benchmarks/x.py``, which put
the repository on ``sys.path`` before importing this as ``benchmarks._stats``)."""

from __future__ import annotations


def percentile(values: list[float], fraction: float) -> float:
    """The value at ``fraction`` (0 to 1) of the sorted ``values``: the nearest rank, no
    interpolation."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]
