"""Per-layer top-p expert selection (paper section 3.3): highest scores until the cumulative score reaches p."""

from __future__ import annotations

from esft.config import SelectionConfig
from esft.expert_config import ExpertConfig
from esft.scoring.scores import ExpertScores

_TOLERANCE = 1e-9  # scores are normalised floats; p=1.0 must not miss by rounding


def select_layer(scores: list[float], top_p: float, max_experts: int | None = None) -> list[int]:
    """Experts of one layer, highest score first, until their cumulative share reaches ``top_p``.

    The expert that crosses the threshold is kept, at least one expert is always kept, and ties are
    broken by the lower expert id so the result is deterministic. ``scores`` are normalised here
    again, so raw gate values work too.

    >>> select_layer([0.1, 0.5, 0.3, 0.1], top_p=0.6)
    [1, 2]
    """
    total = sum(scores)
    if total <= 0:  # no token reached this layer: keep one expert so every layer has a trainable expert
        return [0]
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    chosen: list[int] = []
    cumulative = 0.0
    for expert in order:
        chosen.append(expert)
        cumulative += scores[expert] / total
        if cumulative >= top_p - _TOLERANCE or (max_experts is not None and len(chosen) >= max_experts):
            break
    return sorted(chosen)


def select_experts(scores: ExpertScores, config: SelectionConfig | None = None) -> ExpertConfig:
    """Build an ``ExpertConfig`` from scores with the per-layer top-p rule.

    >>> from esft.scoring.scores import LayerScores
    >>> s = ExpertScores({3: LayerScores([0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.6, 0.3, 0.1], 2)}, 10, 1)
    >>> select_experts(s, SelectionConfig("token", 0.2)).experts
    {3: [0]}
    """
    config = config or SelectionConfig()
    assert config.top_p is not None  # filled by SelectionConfig.__post_init__
    per_layer = {i: layer.get(config.score_function) for i, layer in sorted(scores.layers.items())}
    return ExpertConfig(
        experts={i: select_layer(s, config.top_p, config.max_experts_per_layer) for i, s in per_layer.items()},
        score_function=config.score_function,
        top_p=config.top_p,
        base_model=dict(scores.base_model),
        scores=per_layer,
    )
