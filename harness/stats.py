"""Paired differences between two table rows: how much better one method is than another on the same eval
expressions, with a 95% interval, so that a table can say which differences hold.

Each row's runs give, per seed, every expression's hit (`results[split].outcomes`, harness.evaluate). On the seeds
both rows have, the per-expression hit rates (mean over those seeds) are compared: the difference of their means,
and a paired bootstrap over expressions (scipy.stats.bootstrap, percentile, 2,000 resamples, fixed generator so that
tables regenerate byte for byte). The interval covers which expressions the split happens to hold; seed-to-seed
spread shows in the main table's +- std, and enters here only through the average over seeds.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import bootstrap

from harness.evaluate import unpack_outcomes

RESAMPLES = 2000
CONFIDENCE = 0.95


def _hits(records: list[dict], split: str) -> dict:
    """seed -> hit vector of the split, for the records that carry outcomes."""
    out = {}
    for r in records:
        res = r["results"].get(split) or {}
        if res.get("outcomes") is not None:
            out[r["recipe"].get("seed")] = unpack_outcomes(res["outcomes"], res["n"])
    return out


def paired_difference(mine: list[dict], theirs: list[dict], split: str) -> dict | None:
    """{diff, low, high (Acc@0.5 points), seeds, n} of `mine` - `theirs` on `split`, or None when they share no
    seed with outcomes over the same number of expressions."""
    a, b = _hits(mine, split), _hits(theirs, split)
    seeds = sorted((s for s in a.keys() & b.keys() if len(a[s]) == len(b[s])), key=str)
    if not seeds or len({len(a[s]) for s in seeds}) != 1:
        return None
    x = np.mean([a[s] for s in seeds], axis=0)
    y = np.mean([b[s] for s in seeds], axis=0)
    if np.array_equal(x, y):  # no expression differs: the interval is the point
        return {"diff": 0.0, "low": 0.0, "high": 0.0, "seeds": len(seeds), "n": len(x)}
    ci = bootstrap((x, y), lambda u, v, axis: u.mean(axis) - v.mean(axis), paired=True, vectorized=True,
                   n_resamples=RESAMPLES, confidence_level=CONFIDENCE, method="percentile",
                   rng=np.random.default_rng(0)).confidence_interval
    return {"diff": 100 * float(x.mean() - y.mean()), "low": 100 * float(ci.low), "high": 100 * float(ci.high),
            "seeds": len(seeds), "n": len(x)}


def holds(d: dict) -> bool:
    """The interval excludes zero."""
    return d["low"] > 0 or d["high"] < 0
