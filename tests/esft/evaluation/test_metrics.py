"""Every text metric against values computed by hand, Chinese included, and the bootstrap intervals."""

from __future__ import annotations

import math

import pytest

from esft.errors import ConfigError
from esft.evaluation.bootstrap import mean_interval, paired_difference_interval
from esft.evaluation.metrics import METRIC_NAMES, TEXT_METRICS, bleu_tokenizer, check_metrics, rouge_tokens

CAT = "the cat sat on the mat"
ZH_REF, ZH_ANSWER = "我爱北京天安门", "我爱北京"


def test_exact_match_and_contains_ignore_case_and_spacing():
    em, contains = TEXT_METRICS["exact_match"], TEXT_METRICS["contains"]
    assert em("  The CAT sat on  the mat ", CAT) == 100.0
    assert em("the cat sat", CAT) == 0.0
    assert contains("I think: THE answer is 42.", "the answer is 42") == 100.0
    assert contains("the answer is 4", "the answer is 42") == 0.0
    assert em("我爱北京天安门", ZH_REF) == 100.0 and contains("答：我爱北京天安门。", ZH_REF) == 100.0


def test_strict_exact_match_counts_case_and_inner_spacing():
    strict = TEXT_METRICS["exact_match_strict"]
    assert strict("  the cat sat on the mat\n", CAT) == 100.0
    assert strict("The cat sat on the mat", CAT) == 0.0
    assert strict("the cat  sat on the mat", CAT) == 0.0
    assert strict("ABC", "ABC") == 100.0 and strict("abc", "ABC") == 0.0


def test_bleu_by_hand():
    # "the cat sat on a mat": n-gram precisions 5/6, 3/5, 2/4, 1/3; same length, so no brevity penalty.
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert TEXT_METRICS["bleu"]("the cat sat on a mat", CAT) == pytest.approx(expected)
    assert TEXT_METRICS["bleu"](CAT, CAT) == pytest.approx(100.0)


def test_bleu_tokenizes_chinese_per_character():
    # zh tokenizer: 4 of 7 characters, every n-gram precision 1, brevity penalty exp(1 - 7/4).
    assert bleu_tokenizer(ZH_REF) == "zh" and bleu_tokenizer(CAT) == "13a"
    assert TEXT_METRICS["bleu"](ZH_ANSWER, ZH_REF) == pytest.approx(100 * math.exp(1 - 7 / 4))


def test_chrf_by_hand():
    # "abc" vs "abd": orders 1-3 have n-grams; precision = recall = (2/3 + 1/2 + 0) / 3, so F = that.
    assert TEXT_METRICS["chrf"]("abc", "abd") == pytest.approx(100 * (2 / 3 + 1 / 2) / 3)
    # Chinese: precision 1 on orders 1-4; recall (4/7 + 3/6 + 2/5 + 1/4) / 4; F_beta=2 = 5PR / (4P + R).
    recall = (4 / 7 + 3 / 6 + 2 / 5 + 1 / 4) / 4
    assert TEXT_METRICS["chrf"](ZH_ANSWER, ZH_REF) == pytest.approx(100 * 5 * recall / (4 + recall))


def test_rouge_l_by_hand_and_chinese_per_character():
    # LCS 5 of 5 answer tokens and 6 reference tokens: F = 2 * 1 * 5/6 / (1 + 5/6) = 10/11.
    assert TEXT_METRICS["rouge_l"]("the cat on the mat", CAT) == pytest.approx(100 * 10 / 11)
    # Each CJK character is a token: LCS 4, P = 1, R = 4/7, F = 8/11 (rouge-score alone gives 0 here).
    assert rouge_tokens("答 OK，我爱") == ["答", "ok", "我", "爱"]
    assert TEXT_METRICS["rouge_l"](ZH_ANSWER, ZH_REF) == pytest.approx(100 * 8 / 11)


def test_unknown_metric_names_the_known_ones():
    assert check_metrics(["bleu", "chrf", "bleu"]) == ["bleu", "chrf"]
    with pytest.raises(ConfigError) as err:
        check_metrics(["bleu", "accuracy"], param="evaluation.metrics")
    assert err.value.param == "evaluation.metrics" and "accuracy" in err.value.message
    assert all(name in err.value.message for name in METRIC_NAMES)
    with pytest.raises(ConfigError):
        check_metrics([])


def test_bootstrap_intervals_are_seeded_and_omitted_below_twenty():
    values = [float(i % 5) for i in range(40)]
    low, high = mean_interval(values)
    assert low < sum(values) / len(values) < high
    assert mean_interval(values) == [low, high]  # fixed seed: the same interval every time
    assert mean_interval(values[:19]) is None
    assert mean_interval([3.0] * 25) == [3.0, 3.0]
    base, tuned = [0.0] * 30, [100.0 if i % 2 else 0.0 for i in range(30)]
    low, high = paired_difference_interval(base, tuned)
    assert 0 < low < 50 < high <= 100
    assert paired_difference_interval(base[:10], tuned[:10]) is None
