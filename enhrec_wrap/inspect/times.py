"""The times a user gives enhrec (--since 2d, --until 2026-11-28T14:05), as stamps of the log's
own format, which compare with its `time` fields as text."""

import calendar
import datetime
import re
import time

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.events.timestamps import rfc3339_from_seconds

_RELATIVE_RE = re.compile(r"^(\d+)\s*(s|sec|m|min|h|d|w)$")
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, option: str, now: float | None = None) -> str:
    """A relative time ("90s", "30m", "1h", "2d", "1w": that long ago), `now`, `today`,
    `yesterday` (UTC midnight), or an ISO time (UTC unless it gives an offset)."""
    now = time.time() if now is None else now
    value = text.strip().lower()
    m = _RELATIVE_RE.match(value)
    if m:
        return rfc3339_from_seconds(now - int(m.group(1)) * _UNIT_SECONDS[m.group(2)])
    midnight = calendar.timegm(time.gmtime(now)[:3] + (0, 0, 0))
    named = {"now": now, "today": midnight, "yesterday": midnight - 86400}
    if value in named:
        return rfc3339_from_seconds(named[value])
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise EnhrecError(f"{option} {text!r}: not a time: give a relative time (30m, 1h, 2d, 1w), "
                          "today, yesterday, or an ISO time (2026-11-28, 2026-11-28T14:05, "
                          "2026-11-28T14:05:00+01:00; UTC unless an offset is given)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return rfc3339_from_seconds(moment.timestamp())
