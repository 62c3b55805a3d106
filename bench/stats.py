"""Small statistics helpers shared by the benchmarks."""

from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100.0 * (len(s) - 1)))))
    return s[k]


def summary_us(samples_s: list[float]) -> dict[str, float]:
    """Median and p99 in microseconds of samples given in seconds."""
    return {"median_us": round(percentile(samples_s, 50) * 1e6, 2),
            "p99_us": round(percentile(samples_s, 99) * 1e6, 2),
            "n": len(samples_s)}
