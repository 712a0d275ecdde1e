"""Lengths of time in log lines, as a person on a plant reads them."""

from __future__ import annotations


def spoken_duration(seconds: float) -> str:
    """42 s, 3 min 5 s, 2 h 14 min; to the nearest second, never negative. Pure."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, whole = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {whole} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
