"""Task-agnostic evaluation: run a metric over a dataset and average it.

A metric is a callable `metric(model, batch) -> list[dict[str, float]]`: it runs the model on a
collated batch itself (tasks differ in what the model reads) and returns one dict of numbers per
sample. The same callable serves `evaluate` here and validation in `cvkit.engine.train`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

Metric = Callable[[nn.Module, dict], "list[dict[str, float]]"]


def mean_of(results: list[dict]) -> dict[str, float]:
    """Mean of every numeric key over per-sample dicts (keys of the first sample)."""
    if not results:
        return {}
    keys = [k for k, v in results[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: float(sum(r[k] for r in results) / len(results)) for k in keys}


@torch.inference_mode()
def evaluate(model: nn.Module, dataset: Dataset, metric: Metric, *, batch_size: int = 1,
             progress: bool = True, desc: str = "evaluate") -> dict:
    """Run `metric` over `dataset` in eval mode; returns the per-key means plus `per_sample`."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    results: list[dict] = []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        results.extend(metric(model, batch))
    return {**mean_of(results), "per_sample": results}
