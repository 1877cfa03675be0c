"""Checks of single `PrunerConfig` fields, each a one-line `ValueError` naming the field."""

from __future__ import annotations

from typing import Any

# Sanity-check controls (Frankle et al., 2021): what each does to the criterion's masks.
CONTROLS = {
    "shuffle": "every tensor keeps as many weights as the criterion kept in it, at random "
    "positions",
    "invert": "the lowest-scored weights are kept instead of the highest",
    "magnitude_inside": "every tensor keeps as many weights as the criterion kept in it, those "
    "of largest magnitude",
}


def check_count(name: str, value: Any) -> None:
    """Raise a `ValueError` unless `value` is an integer >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")


def as_float(name: str, value: Any) -> float:
    """`value` as a float, or a `ValueError` naming the field."""
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be a number, got {value!r}.")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a number, got {value!r}.") from None


def check_control(control: str | None) -> None:
    """Raise a `ValueError` unless `control` is None or a known control (`CONTROLS`)."""
    if control is not None and control not in CONTROLS:
        raise ValueError(
            f"`control` must be None or one of {', '.join(map(repr, CONTROLS))}, got {control!r}."
        )


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Raise a `ValueError` unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, allowed))}, got {value!r}.")
