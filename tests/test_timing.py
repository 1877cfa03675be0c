"""Side-by-side timing: the rotation of the rounds and the statistics, on hand-worked cases."""

from __future__ import annotations

import pytest

from hf_afr.inference.timing import compare_rounds, time_rounds


def test_rounds_rotate_the_order_after_one_warm_up_call():
    calls = []
    variants = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = time_rounds(variants, rounds=3, repeats=2)
    warm_up, rounds = calls[:3], calls[3:]
    assert warm_up == ["a", "b", "c"]
    # Each measurement is 2 calls; round r starts at variant r.
    assert rounds == [*"aabbcc", *"bbccaa", *"ccaabb"]
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for ts in times.values() for t in ts)


def test_comparison_of_hand_made_rounds():
    times = {"a": [2.0, 4.0, 3.0], "b": [1.0, 1.0, 2.0]}
    b = compare_rounds(times, baseline="a")["b"]
    # Per-round ratios a / b: 2, 4, 1.5.
    assert (b.seconds, b.speedup, b.speedup_range, b.best_speedup) == (1.0, 2.0, (1.5, 4.0), 2.0)
    a = compare_rounds(times, baseline="a")["a"]
    assert (a.speedup, a.speedup_range, a.best_speedup) == (1.0, (1.0, 1.0), 1.0)
    with pytest.raises(ValueError, match="baseline"):
        compare_rounds(times, baseline="c")
