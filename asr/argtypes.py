"""argparse types shared by the asr commands: a bad number is a usage error before any work."""
from __future__ import annotations

import argparse
from typing import Callable


def int_at_least(lo: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``lo`` (a clean usage error otherwise)."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if n < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {n}")
        return n
    return parse


positive_int = int_at_least(1)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < x < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return x
