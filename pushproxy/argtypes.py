"""argparse value types shared by the command-line tools: bounded numbers with clear errors."""

from __future__ import annotations

import argparse
import math
from typing import Callable


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """A type accepting whole numbers from ``low`` to ``high`` (inclusive; None: no upper bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"from {low} to {high}" if high is not None else f"at least {low}")
        return value
    return parse


def seconds(low: float = 0.0, high: float = math.inf, *,
            allow_low: bool = False) -> Callable[[str], float]:
    """A type accepting a number of seconds above ``low`` (or equal, with allow_low) up to ``high``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError("a number of seconds") from None
        above = value >= low if allow_low else value > low
        if not (above and value <= high and math.isfinite(value)):
            raise argparse.ArgumentTypeError(
                f"from {low:g} to {high:g} seconds" if math.isfinite(high)
                else "a positive number of seconds")
        return value
    return parse
