"""The `time` field's format, RFC 3339 in UTC with milliseconds and `Z` (2026-11-28T05:49:07.883Z):
written from nanoseconds by the recorder, from seconds by readers that compare with it, read back.

Stamps of this one format sort as text, which is how readers compare them with each other.
"""

import datetime
import time


def rfc3339(epoch_ns: int) -> str:
    """UTC, millisecond precision, `Z` suffix: the reference's `time` format."""
    global _last
    millis = epoch_ns // 1_000_000
    last_millis, stamp = _last
    if millis == last_millis:
        return stamp
    seconds, rest = divmod(millis, 1000)
    prefix = _second_prefixes.get(seconds)
    if prefix is None:
        if len(_second_prefixes) > 4096:
            _second_prefixes.clear()
        prefix = _second_prefixes[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S.",
                                                           time.gmtime(seconds))
    stamp = f"{prefix}{rest:03d}Z"
    _last = (millis, stamp)
    return stamp


def rfc3339_ascii(epoch_ns: int) -> bytes:
    """rfc3339() as ASCII bytes (for a line made from a bytes format), kept for its millisecond
    as rfc3339 keeps its own."""
    global _last_ascii
    millis = epoch_ns // 1_000_000
    if millis == _last_ascii[0]:
        return _last_ascii[1]
    stamp = rfc3339(epoch_ns).encode()
    _last_ascii = (millis, stamp)
    return stamp


# strftime of each second once: a busy session writes thousands of events per second.
_second_prefixes = {}
# The last stamp made, by its millisecond: a burst's events come hundreds to a millisecond
# (100,000 opens in about 0.25 s): measured for such a burst, 0.11 to 0.17 us a stamp with
# it, 0.30 to 0.48 us without.
_last = (None, "")
_last_ascii = (None, b"")


def rfc3339_from_seconds(epoch: float) -> str:
    """The same format for a time in seconds (a bound a user gave), rounded to the millisecond."""
    whole = int(epoch // 1)
    millis = int(round((epoch - whole) * 1000))
    if millis == 1000:
        whole, millis = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def epoch_of(stamp) -> float | None:
    """Seconds since the epoch of a stamp; None for anything that is not one."""
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def seconds_between(start, stop) -> float | None:
    a, b = epoch_of(start), epoch_of(stop)
    return None if a is None or b is None else b - a
