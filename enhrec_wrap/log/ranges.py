"""A set of numbers kept as sorted, disjoint ranges: a session's `ei` numbers and a host's `seq`
numbers are one range, or few, however many there are (inspect/gaps.py, log/reader.py)."""

import bisect


class Ranges:
    """Non-negative integers seen, as ranges."""

    def __init__(self):
        self._lows = []    # sorted starts of the ranges
        self._highs = []   # their (inclusive) ends

    def add(self, n) -> bool:
        """Adds `n`; False when it was seen already (or is not a number)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            return False
        lows, highs = self._lows, self._highs
        if highs and n == highs[-1] + 1:   # the usual case: the next one
            highs[-1] = n
            return True
        i = bisect.bisect_right(lows, n) - 1
        if i >= 0 and n <= highs[i]:
            return False
        joins_left = i >= 0 and highs[i] == n - 1
        joins_right = i + 1 < len(lows) and lows[i + 1] == n + 1
        if joins_left and joins_right:
            highs[i] = highs.pop(i + 1)
            lows.pop(i + 1)
        elif joins_left:
            highs[i] = n
        elif joins_right:
            lows[i + 1] = n
        else:
            lows.insert(i + 1, n)
            highs.insert(i + 1, n)
        return True

    def __contains__(self, n) -> bool:
        i = bisect.bisect_right(self._lows, n) - 1 if isinstance(n, int) else -1
        return i >= 0 and n <= self._highs[i]

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
