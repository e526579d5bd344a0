"""Small statistics shared by training and the Django side (no torch, no Django: annotate may import it)."""

from __future__ import annotations

import math
from statistics import NormalDist

# Two-sided 95 % normal quantile.
Z_95 = NormalDist().inv_cdf(0.975)


def wilson_interval(successes: float, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default).

    Wilson rather than the normal approximation because our samples are small (tens of votes or held-out pairs) and
    a good model's share may sit near 1, where the normal interval is too narrow and can leave [0, 1]; Wilson keeps
    close to its stated coverage there. A tie counts half a success, so `successes` may be fractional."""
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be between 0 and trials ({trials}), got {successes}")
    share = successes / trials
    denominator = 1 + z * z / trials
    centre = (share + z * z / (2 * trials)) / denominator
    half_width = z / denominator * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half_width), min(1.0, centre + half_width)
