"""Keyword-only constructor argument checks shared by every component (clear errors, no asserts)."""

__all__ = ["check_int", "check_choice"]


def check_int(name, value, *, lo=None, hi=None):
    """Return ``value`` if it is an ``int`` (not ``bool``) in ``[lo, hi]``, else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be at least {lo}, not {value}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be at most {hi}, not {value}")
    return value


def check_choice(name, value, choices):
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; not {value!r}")
    return value
