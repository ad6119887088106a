"""Beta schedules: golden values worked out by hand, the edges, and the argument checks."""

from __future__ import annotations

import math

import pytest

from merlina_orpo_plugin.schedules import beta_at, is_scheduled


def test_linear_from_beta_to_beta_end_over_the_steps_after_warmup():
    # 10 steps, 2 of warmup: steps 0 and 1 ramp 0 -> 0.2 (0.0, 0.1); then 8 steps from 0.2 to 0.6,
    # 0.05 per step: step 2 -> 0.2, step 6 -> 0.4, step 10 -> 0.6 (and it stays there past the end).
    kwargs = dict(beta=0.2, beta_end=0.6, schedule="linear", warmup_steps=2)
    expected = {0: 0.0, 1: 0.1, 2: 0.2, 3: 0.25, 6: 0.4, 9: 0.55, 10: 0.6, 12: 0.6}
    for step, value in expected.items():
        assert beta_at(step, 10, **kwargs) == pytest.approx(value), step


def test_cosine_halfway_is_the_mean_and_the_ends_are_exact():
    # p = (step - 0) / 8: p=0 -> beta, p=1/2 -> (beta + end) / 2, p=1 -> end; p=1/4 -> end + (beta-end)(1+cos(pi/4))/2.
    kwargs = dict(beta=0.5, beta_end=0.1, schedule="cosine")
    assert beta_at(0, 8, **kwargs) == pytest.approx(0.5)
    assert beta_at(4, 8, **kwargs) == pytest.approx(0.3)
    assert beta_at(8, 8, **kwargs) == pytest.approx(0.1)
    assert beta_at(2, 8, **kwargs) == pytest.approx(0.1 + 0.4 * (1 + math.cos(math.pi / 4)) / 2)


def test_constant_is_beta_after_warmup_and_does_not_count_as_a_schedule():
    assert [beta_at(s, 5, beta=0.1, schedule="constant", warmup_steps=4) for s in range(6)] == pytest.approx(
        [0.0, 0.025, 0.05, 0.075, 0.1, 0.1]
    )
    assert beta_at(3, 5, beta=0.1) == 0.1
    assert not is_scheduled("constant", 0)
    assert is_scheduled("constant", 1) and is_scheduled("linear", 0)


def test_a_missing_beta_end_means_beta_and_a_bad_name_is_refused():
    assert beta_at(7, 10, beta=0.3, schedule="linear") == pytest.approx(0.3)
    with pytest.raises(ValueError, match="one of constant, linear, cosine, got 'step'"):
        beta_at(0, 10, beta=0.1, schedule="step")
