"""Routing concentration and overlap on known scores."""

from __future__ import annotations

from esft.scoring.scores import ExpertScores, LayerScores
from research.routing import concentration, overlap


def test_concentration_and_overlap():
    uniform = ExpertScores({0: LayerScores([0.2] * 5, [0.2] * 5, [0.2] * 5, 1)}, 10, 1)
    peaked = ExpertScores({0: LayerScores([0.6, 0.1, 0.1, 0.1, 0.1], [0.7, 0.1, 0.1, 0.05, 0.05], [0] * 5, 1)}, 10, 1)
    assert concentration(uniform, 0.2, "gate") == [0.2]
    assert abs(concentration(peaked, 0.2, "gate")[0] - 0.7) < 1e-9
    assert overlap(peaked, peaked) == 1.0
    other = ExpertScores({0: LayerScores([0, 0, 0, 0, 1.0], [0, 0, 0, 0, 1.0], [0] * 5, 1)}, 10, 1)
    assert overlap(peaked, other) == 0.0
