"""Which events of a session are missing from what was read: every session numbers its events
0, 1, 2 ... with no gap (`ei`, session.start is 0), so a hole in the numbers read is an event
the log lost (a full disk, a file removed), whatever session.end says about it.

The numbers seen are kept as ranges, which stay one or two per session however long it is.
"""

from enhrec_wrap.log.ranges import Ranges


# The `ei` numbers seen of one session.
Eis = Ranges


def count(gaps: list[tuple[int, int]]) -> int:
    return sum(high - low + 1 for low, high in gaps)


def text(gaps: list[tuple[int, int]], most: int = 4) -> str:
    """"ei 0-97, 120" for the first `most` ranges, with how many more."""
    shown = [f"{low}" if low == high else f"{low}-{high}" for low, high in gaps[:most]]
    more = f" and {len(gaps) - most} more range(s)" if len(gaps) > most else ""
    return "ei " + ", ".join(shown) + more
