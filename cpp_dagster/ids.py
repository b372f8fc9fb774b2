"""Ids and counters read from text that someone else wrote: a run tag, a plate key, a
`status` JSON in imagedb. Only ASCII digits count. `str.isdigit()` is not that rule:
it accepts "²" (which `int()` then rejects, raising in a sensor's tick) and "١" (which
`int()` reads as 1, another row's id)."""

from __future__ import annotations

import re

# At most 9 digits: every id and counter of imagedb is a PostgreSQL `integer`, and a
# longer value would fail the query it is put into rather than match no row.
MAX_DIGITS = 9
_WHOLE = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")


def parse_id(value: object) -> int | None:
    """`value` as a non-negative whole number, or None when it is not one: a JSON int, or
    a string of 1 to 9 ASCII digits. Booleans, floats ("1.0", 1.0), signs, spaces and
    other scripts' digits are not."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < 10**MAX_DIGITS else None
    if isinstance(value, str) and _WHOLE.fullmatch(value):
        return int(value)
    return None
