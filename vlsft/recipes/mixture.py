"""The arithmetic of a recipe's data section, seeded by `data.seed` so the same recipe always gives the same rows:
row limits (`rows` / `fraction`), the `eval_fraction` hold-out and the weighted mixture. The dry run counts with the
same functions the run uses (`vlsft.recipes.plan`)."""

from __future__ import annotations

import math

from vlsft.recipes.schema import DatasetSource, RecipeError


def mixture_counts(sizes: list[int], weights: list[float], total: int | None = None) -> list[int]:
    """Rows each source gives a weighted mixture of `total` rows (default: sum of sizes): proportional to the
    weights, rounded by largest remainder so that the counts add up to `total` exactly."""
    total = sum(sizes) if total is None else total
    shares = [total * weight / sum(weights) for weight in weights]
    counts = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: (counts[i] - shares[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _rng(seed: tuple[int, ...]):
    import numpy as np

    return np.random.default_rng(list(seed))


def kept_rows(size: int, source: DatasetSource) -> int:
    """How many of a source's `size` rows its `rows` / `fraction` limit keeps (the dry run counts with it too)."""
    if source.rows is not None:
        return min(source.rows, size)
    if source.fraction is not None:
        return max(1, round(size * source.fraction))
    return size


def held_out_rows(size: int, fraction: float) -> int:
    """How many of a train source's `size` rows `data.eval_fraction` holds out for evaluation (at least one)."""
    return max(1, round(size * fraction))


def limit_rows(dataset, source: DatasetSource, seed: tuple[int, ...]):
    """Keep `rows` rows or a `fraction` of them: a seeded random sample, in the dataset's order."""
    size = len(dataset)
    keep = kept_rows(size, source)
    if keep == size:
        return dataset
    return dataset.select(sorted(_rng(seed).permutation(size)[:keep].tolist()))


def hold_out(dataset, fraction: float, seed: tuple[int, ...], where: str):
    """(train, held out): `held_out_rows` of the rows, a seeded random sample, for evaluation."""
    size = len(dataset)
    held = held_out_rows(size, fraction)
    if held >= size:
        raise RecipeError(f"`data.eval_fraction` {fraction} of `{where}` ({size} rows) leaves nothing to train on.")
    order = _rng(seed).permutation(size).tolist()
    return dataset.select(sorted(order[held:])), dataset.select(sorted(order[:held]))


def resample(dataset, count: int, seed: tuple[int, ...]):
    """`count` rows of `dataset` for a weighted mixture: seeded random order, whole passes repeated when upsampling."""
    size = len(dataset)
    if size == 0:
        return dataset
    rng = _rng(seed)
    indices: list[int] = []
    while len(indices) < count:
        indices.extend(rng.permutation(size).tolist())
    return dataset.select(indices[:count])
