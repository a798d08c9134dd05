"""The results writer: owns a campaign's results file from the resume check to the last write.

- **Lock**: ``fileio.output_lock`` on the file for the whole campaign (two campaigns on one --out
  once both exited 0 with one's results lost).
- **Resume**: the file, checked against the campaign's identity, with its journal folded in.
- **Per chip, O(1)**: the record goes into the document, the rate's running statistics
  (``results.RunningStats``: progress and --ci stops) and one appended, flushed line of the
  journal (``results.journal_path``). A kill -9 loses no finished chip: resume replays the
  journal, so it re-runs only the chips that were running.
- **Rewrites, throttled**: the whole file (``results.refresh``: summaries exactly as a merge
  computes them) is rewritten atomically at the start, at the end (also after an error or an
  interrupt), and in between at most once per ``SNAPSHOT_SECONDS`` and only once the chips
  recorded since the last rewrite are ``SNAPSHOT_GROWTH`` (all) of those in the file before it;
  then the journal is emptied. A rewrite costs time in proportion to the file's chips, so spacing
  rewrites geometrically (the file doubles between two) keeps the rewrites' cost per chip at about
  twice one chip's share of a rewrite, however many chips the file holds
  (benchmarks/bench_bookkeeping.py; a rewrite after every chip cost 36 ms at 4,000 chips and
  356 ms at 40,000). Readers (``read_results``: plot, merge, resume) fold the journal in too.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack
from pathlib import Path

from ..fileio import output_lock
from ..results import (
    JOURNAL_FORMAT,
    VERSION,
    RunningStats,
    config_digest,
    journal_path,
    read_results,
    refresh,
    write_results,
)
from .plan import check_same

SNAPSHOT_SECONDS = 1.0  # at most one rewrite of the whole file per second...
SNAPSHOT_GROWTH = 1.0   # ...and only once the chips recorded since the last one match those before


class ResultsWriter:
    """``doc``: the results document; ``add`` a chip, ``note_auto`` a rate's --images auto choice,
    ``stats[i]`` a rate's running statistics; ``close`` writes the final file. Without ``out``,
    only the document is kept (the Python API's in-memory campaign)."""

    def __init__(self, doc: dict, out: Path | None):
        self.doc, self.out = doc, out
        self.stats = []
        for entry in doc["rates"]:  # in run order: as the straight run added them (--ci stops)
            stats = RunningStats()
            for r in sorted(int(k) for k in entry["runs"]):
                stats.add(entry["runs"][str(r)]["accuracy"])
            self.stats.append(stats)
        self.t0 = time.perf_counter()
        self.done = self.ran = self.images = 0
        self.images_auto = "images_auto" in doc["config"]
        self._journal = None
        self._since = 0  # chips recorded since the last rewrite
        self._last = 0.0
        # nothing is written before the campaign's first snapshot (a campaign that fails to start
        # leaves no file behind); a resumed file is rewritten at the end in any case
        self.live = False

    # ------------------------------------------------------------ opening and closing

    @classmethod
    def open(cls, stack: ExitStack, out, config: dict, shard: tuple[int, int], resume: bool, fresh) -> ResultsWriter:
        """The writer of ``out`` (None: in memory), its lock held until ``stack`` closes; a
        resumed file must hold ``config`` and ``shard``; ``fresh()`` makes a new document."""
        from ..errors import RuntimeInputError

        out = Path(out) if out is not None else None
        doc = None
        if out is not None:
            stack.enter_context(output_lock(out, "rram validate"))
            if out.exists() or journal_path(out).exists():
                if not resume:
                    raise RuntimeInputError(f"{out} exists: pass --resume to continue it, or choose another --out")
                if not out.exists():
                    raise RuntimeInputError(f"{journal_path(out)} is left without its results file {out}: "
                                            f"remove it, or restore {out}")
                doc = read_results(out, journal=False)
                check_same(doc, config, shard, out)
                from ..results import apply_journal

                apply_journal(doc, journal_path(out))
        writer = cls(fresh() if doc is None else doc, out)
        writer.live = doc is not None
        stack.callback(writer.close)  # also after an error or an interrupt: what finished is written
        return writer

    def close(self) -> None:
        if self.live or self.out is None:
            self.snapshot()  # the file now holds every chip, and the journal is gone

    # ------------------------------------------------------------ per chip

    def add(self, i: int, r: int, record: dict, ran: bool) -> None:
        """Chip ``r`` of rate ``i`` finished (``ran``: evaluated, not a reused fault-free chip)."""
        entry = self.doc["rates"][i]
        entry["runs"][str(r)] = record
        self.stats[i].add(record["accuracy"])
        self.done += 1
        self.ran += ran
        if self.images_auto and ran:
            self.images += record["images"]
        self._log({"rate": i, "run": r, "record": record})
        self._since += 1
        if self.out is not None and self._since >= SNAPSHOT_GROWTH * self.chips() and \
                time.perf_counter() - self._last >= SNAPSHOT_SECONDS:
            self.snapshot()

    def note_auto(self, i: int, record: dict) -> None:
        """Rate ``i``'s --images auto size, chosen once after its pilot chips (kept on resume)."""
        self.doc["rates"][i]["images_auto"] = record
        self._log({"rate": i, "images_auto": record})

    def chips(self) -> int:
        return sum(len(e["runs"]) for e in self.doc["rates"])

    def _log(self, item: dict) -> None:
        if self.out is None:
            return
        if self._journal is None:
            # held open from chip to chip (closed at the next rewrite): one append each, no reopening
            self._journal = open(journal_path(self.out), "w", encoding="utf-8")  # noqa: SIM115
            self._journal.write(json.dumps({"format": JOURNAL_FORMAT, "version": VERSION,
                                            "config_sha256": config_digest(self.doc["config"])}) + "\n")
        # flushed, not fsynced: a killed process loses nothing the kernel has (a power cut may)
        self._journal.write(json.dumps(item) + "\n")
        self._journal.flush()

    # ------------------------------------------------------------ the whole file

    def timing(self) -> dict:
        """This process's chips and speed; only the chips that ran count for the speed (fault-free
        ones are reused, not run)."""
        seconds = time.perf_counter() - self.t0
        t = {"runs": self.done, "ran": self.ran, "reused": self.done - self.ran, "seconds": round(seconds, 3),
             "runs_per_second": self.ran / seconds if seconds else None,
             "images_per_second": self.ran * self.doc["config"]["images"] / seconds if seconds else None}
        if self.images_auto:  # chips ran on subsets: count the images they really evaluated
            t.update(images=self.images, images_per_second=self.images / seconds if seconds else None)
        return t

    def snapshot(self) -> None:
        """Summaries and completeness recomputed from all runs, the file rewritten atomically,
        then the journal emptied (its chips are in the file)."""
        if self.done:
            self.doc["timing"] = self.timing()
        refresh(self.doc)
        if self.out is None:
            return
        self.live = True
        write_results(self.doc, self.out)
        if self._journal is not None:
            self._journal.truncate(0)
            self._journal.seek(0)
            self._journal.close()
            self._journal = None
            os.unlink(journal_path(self.out))
        elif journal_path(self.out).exists():  # a resumed run's journal, now folded in
            os.unlink(journal_path(self.out))
        self._since, self._last = 0, time.perf_counter()
