"""What the benchmark scripts' command lines share: the project's parser, whose usage errors are
one line and exit status 2, and counts with a floor."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from tuning.cli import OneLineParser
from tuning.errors import shorten

__all__ = ["WARM_UP", "OneLineParser", "at_least"]


def at_least(low: int, why: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number of `low` or more; `why` says why, when it is not
    obvious (the first epoch is a warm-up, and a median needs one more)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(
                f"expected {low} or more{f' ({why})' if why else ''}, got {shorten(text)!r}")
        return value
    return parse


WARM_UP = "the first epoch is a warm-up"
