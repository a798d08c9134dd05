"""Progress of long work (a campaign's chips, a training epoch's steps, recalibration's batches):
tqdm's bar (with a total, so an ETA) on a terminal; elsewhere (batch jobs, logs, ``make demo >
log``) a line on stderr every ``PROGRESS_SECONDS``: done/total, elapsed, ETA."""
from __future__ import annotations

import os
import sys
import time


def _progress_seconds(default: float = 10.0) -> float:
    try:
        value = float(os.environ.get("RRAM_PROGRESS_SECONDS", default))
    except ValueError:  # a typo in the environment is no reason to stop a campaign
        return default
    return value if value >= 0 else default


PROGRESS_SECONDS = _progress_seconds()  # between progress lines when stderr is not a terminal


def hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Progress:
    """``update(note)`` once per unit done; ``close()`` at the end."""

    def __init__(self, total: int, enabled: bool, desc: str = "validate", unit: str = "chip", *,
                 leave: bool = True):
        from tqdm import tqdm

        self.total, self.done, self.timed, self.lines = total, 0, 0, enabled and not sys.stderr.isatty()
        self.desc, self.unit = desc, unit
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=leave, disable=None if enabled else True)
        self.t0 = self.last = time.monotonic()

    def update(self, note: str = "", *, timed: bool = True) -> None:
        """One unit done; ``timed=False`` for one that cost next to nothing (a campaign's fault-free
        chips after the first are the same chip, reused): the ETA is the elapsed time over the timed
        units, else 20 reused chips first made it 20x too short. Reused units still to come count as
        timed ones (too long an ETA, never too short: a campaign's fault-free rate usually comes first)."""
        self.done += 1
        self.timed += timed
        self.bar.update(1)
        if note:
            self.bar.set_postfix_str(note, refresh=False)
        now = time.monotonic()
        if self.lines and now - self.last >= PROGRESS_SECONDS:
            self.last = now
            elapsed = now - self.t0
            eta = elapsed / (self.timed or self.done) * (self.total - self.done)
            tail = f" ({note})" if note else ""
            print(f"{self.desc}: {self.done}/{self.total} {plural(self.unit)}, {hms(elapsed)} elapsed, ETA {hms(eta)}"
                  f"{tail}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


def plural(unit: str) -> str:
    """English plural of a progress unit: steps, runs, batches (not "batchs")."""
    return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")
