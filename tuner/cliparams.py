"""Click parameter types the command line shares: one declaration of what a number option
accepts, so every float option refuses ``nan`` and ``inf`` the same way (exit 2, one line)."""

from __future__ import annotations

import math
from typing import Any

import click


class Finite(click.FloatRange):
    """A finite float within ``[min, max]`` (``min_open``: above ``min``); ``nan``, ``inf`` and
    numbers too large for a float are refused with the range named."""

    name = "finite number"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        number = value if isinstance(value, float) else None
        if number is None:
            try:
                number = float(value)
            except (TypeError, ValueError, OverflowError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number ({self._describe_range()})", param, ctx)
        return super().convert(number, param, ctx)


SECONDS = Finite(min=1, max=604800)  # a duration from 1 s to a week
POSITIVE = Finite(min=0, min_open=True)
NON_NEGATIVE = Finite(min=0)
