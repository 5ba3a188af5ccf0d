"""Perplexity from a mean loss, one formula for `train`'s logs, `evaluate` and the quickstart's summary."""

import math


def perplexity(mean_loss: float) -> float:
    """exp(loss) in nats per token; capped below float overflow (a diverged loss reads as a huge, finite number)."""
    return math.exp(min(mean_loss, 700.0))
