"""Side-by-side timing: variants interleaved round by round, medians of per-round ratios.

Absolute times on a shared machine drift by more than the effects we measure; ratios taken
within one round (each variant once, the order rotating between rounds) do not.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    """One variant against the baseline.

    `seconds`: median seconds per call; `speedup`: median of the per-round ratios baseline time /
    variant time, with their `speedup_range`; `best_speedup`: fastest baseline call / fastest
    variant call, the estimate least disturbed by other load on the machine (which only ever
    slows calls down), used to choose kernels.
    """

    seconds: float
    speedup: float
    speedup_range: tuple[float, float]
    best_speedup: float = 0.0


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(
    fn: Callable[[], object], repeats: int = 1, device: torch.device | None = None
) -> float:
    """Wall-clock seconds per call of `fn`, over `repeats` calls (CUDA work included)."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def inference_call(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> Callable[[], None]:
    """A callable running `model(**inputs)` under `torch.inference_mode`, to time."""

    def call() -> None:
        with torch.inference_mode():
            model(**inputs)

    return call


def time_rounds(
    variants: dict[str, Callable[[], object]],
    rounds: int = 5,
    repeats: int = 1,
    device: torch.device | None = None,
    warmup: bool = True,
) -> dict[str, list[float]]:
    """Seconds per call of every variant in each of `rounds` interleaved rounds.

    In each round every variant is measured once (over `repeats` calls), in an order that
    rotates from round to round, so that drift on a shared machine hits all variants alike.
    Compare them with `compare_rounds`.

    Args:
        variants (`dict[str, Callable]`): the callables to time.
        rounds (`int`, defaults to 5): number of rounds.
        repeats (`int`, defaults to 1): calls per measurement.
        device (`torch.device`, *optional*): synchronized around measurements if CUDA.
        warmup (`bool`, defaults to `True`): call every variant once, untimed, first.
    """
    names = list(variants)
    for name in names if warmup else ():  # allocations, caches, library handles
        variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(seconds_per_call(variants[name], repeats, device))
    return times


def compare_rounds(times: dict[str, list[float]], baseline: str) -> dict[str, Timing]:
    """Each variant's `Timing` against `baseline`, from the per-round times of `time_rounds`.

    The speed-up of a round is baseline time / variant time (> 1: faster than the baseline).
    """
    if baseline not in times:
        raise ValueError(f"The baseline {baseline!r} must be one of the variants.")
    result = {}
    for name, own in times.items():
        ratios = [b / v for b, v in zip(times[baseline], own)]
        result[name] = Timing(
            seconds=statistics.median(own),
            speedup=statistics.median(ratios),
            speedup_range=(min(ratios), max(ratios)),
            best_speedup=min(times[baseline]) / min(own),
        )
    return result


def time_side_by_side(
    variants: dict[str, Callable[[], object]],
    baseline: str,
    rounds: int = 5,
    min_time: float = 0.002,
    device: torch.device | None = None,
    drop_slower_than: float | None = None,
    warmup: bool = True,
) -> dict[str, Timing]:
    """Time callables side by side and compare each with `baseline`.

    Every variant runs once untimed and once timed as a warm-up (the timed call decides
    `drop_slower_than`); the number of calls per measurement is set so that
    the baseline's measurement lasts at least `min_time` seconds. In each round every variant
    is measured once, in an order that rotates from round to round (`time_rounds`).

    Args:
        variants (`dict[str, Callable]`): the callables, including `baseline`.
        baseline (`str`): the key that the speed-ups are relative to.
        rounds (`int`, defaults to 5): number of rounds.
        min_time (`float`, defaults to 0.002): seconds per measurement of the baseline, at least.
        device (`torch.device`, *optional*): synchronized around measurements if CUDA.
        drop_slower_than (`float`, *optional*): variants whose warm-up call is this many times
            slower than the baseline's are not measured further (their speed-up is that of the
            warm-up), which saves time where a kernel clearly loses.
        warmup (`bool`, defaults to `True`): make a first, untimed call of every variant; pass
            False if the caller has just called each of them.

    Returns:
        `dict[str, Timing]`: per variant, median seconds per call and the median (and range) of
        its per-round ratio baseline time / variant time (> 1: faster than the baseline).
    """
    if baseline not in variants:
        raise ValueError(f"The baseline {baseline!r} must be one of the variants.")
    for fn in variants.values() if warmup else ():  # allocations, caches, library handles
        seconds_per_call(fn, 1, device)
    warm = {name: seconds_per_call(fn, 1, device) for name, fn in variants.items()}
    dropped = {
        name: Timing(t, warm[baseline] / t, (warm[baseline] / t,) * 2, warm[baseline] / t)
        for name, t in warm.items()
        if drop_slower_than is not None and t > drop_slower_than * warm[baseline]
    }
    kept = {name: fn for name, fn in variants.items() if name not in dropped}
    repeats = max(1, min(1000, math.ceil(min_time / max(warm[baseline], 1e-9))))
    times = time_rounds(kept, rounds, repeats, device, warmup=False)
    return {**dropped, **compare_rounds(times, baseline)}
