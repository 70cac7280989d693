"""Which events of a session are missing from what was read: every session numbers its events
0, 1, 2 ... with no gap (`ei`, session.start is 0), so a hole in the numbers read is an event
the log lost (a full disk, a file removed), whatever session.end says about it.

The numbers seen are kept as ranges, which stay one or two per session however long it is.
"""

import bisect


class Eis:
    """The `ei` numbers seen of one session."""

    def __init__(self):
        self._lows = []    # sorted starts of the ranges
        self._highs = []   # their (inclusive) ends

    def add(self, ei) -> bool:
        """Adds `ei`; False when it was seen already (or is not a number)."""
        if not isinstance(ei, int) or isinstance(ei, bool) or ei < 0:
            return False
        lows, highs = self._lows, self._highs
        if highs and ei == highs[-1] + 1:   # the usual case: the next one
            highs[-1] = ei
            return True
        i = bisect.bisect_right(lows, ei) - 1
        if i >= 0 and ei <= highs[i]:
            return False
        joins_left = i >= 0 and highs[i] == ei - 1
        joins_right = i + 1 < len(lows) and lows[i + 1] == ei + 1
        if joins_left and joins_right:
            highs[i] = highs.pop(i + 1)
            lows.pop(i + 1)
        elif joins_left:
            highs[i] = ei
        elif joins_right:
            lows[i + 1] = ei
        else:
            lows.insert(i + 1, ei)
            highs.insert(i + 1, ei)
        return True

    def __contains__(self, ei) -> bool:
        i = bisect.bisect_right(self._lows, ei) - 1 if isinstance(ei, int) else -1
        return i >= 0 and ei <= self._highs[i]

    def __bool__(self) -> bool:
        return bool(self._lows)

    @property
    def first(self) -> int | None:
        return self._lows[0] if self._lows else None

    @property
    def last(self) -> int | None:
        return self._highs[-1] if self._highs else None

    def gaps(self, upto: int | None = None, from_zero: bool = True) -> list[tuple[int, int]]:
        """The missing (first, last) ranges up to `upto` (default: the last seen), from 0 (or,
        with from_zero False, from the first seen: when the session's start may lie outside
        what was read)."""
        if not self._lows:
            return [(0, upto)] if from_zero and upto is not None and upto >= 0 else []
        found = []
        expected = 0 if from_zero else self._lows[0]
        for low, high in zip(self._lows, self._highs):
            if upto is not None and low > upto:
                break
            if low > expected:
                found.append((expected, low - 1))
            expected = high + 1
        end = self._highs[-1] if upto is None else upto
        if expected <= end:
            found.append((expected, end))
        return found


def count(gaps: list[tuple[int, int]]) -> int:
    return sum(high - low + 1 for low, high in gaps)


def text(gaps: list[tuple[int, int]], most: int = 4) -> str:
    """"ei 0-97, 120" for the first `most` ranges, with how many more."""
    shown = [f"{low}" if low == high else f"{low}-{high}" for low, high in gaps[:most]]
    more = f" and {len(gaps) - most} more range(s)" if len(gaps) > most else ""
    return "ei " + ", ".join(shown) + more
