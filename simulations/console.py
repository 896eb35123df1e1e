"""What a person reads while Flower runs go on: a line per round phase, Flower's own output on request."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console as RichConsole
from rich.text import Text

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # terminal colour and cursor codes, as Flower's log lines carry
ALWAYS_SHOWN = ("warning:", "ERROR")  # lines of a run's output a person sees even when not verbose


@dataclass(frozen=True)
class Phase:
    """A round phase a run completed, as its `per_site.json` records it."""

    round: int
    phase: str  # "train" or "evaluate"
    sites: int  # sites that sent a usable reply
    missing: int  # sampled sites that did not


def completed_phases(rows: list[dict]) -> list[Phase]:
    """The phases in a run's per-site rows, in the order they ran (each round's training first)."""
    counts: dict[tuple[int, str], list[int]] = {}
    for row in rows:
        answered_missing = counts.setdefault((int(row["round"]), str(row["phase"])), [0, 0])
        answered_missing[1 if "error" in row else 0] += 1
    return [Phase(r, p, ok, missing) for (r, p), (ok, missing) in
            sorted(counts.items(), key=lambda item: (item[0][0], item[0][1] != "train"))]


def read_phases(path: Path) -> list[Phase]:
    """The phases in `path` (a run's `per_site.json`); none while it is absent or unreadable."""
    try:
        return completed_phases(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return []


def progress_line(label: str, phase: Phase, total: int, seconds: float) -> Text:
    """'federated: round 3/5 train 8 sites 12 s': `seconds` since the run started, the label in bold."""
    missing = f" ({phase.missing} missing)" if phase.missing else ""
    return Text.assemble((f"{label}: " if label else "", "bold"),
                         f"round {phase.round}/{total} {phase.phase} {phase.sites} site{'s' * (phase.sites != 1)}"
                         f"{missing} ",
                         (f"{seconds:.0f} s", "dim"))


class Console:
    """What a person reads while runs go on: a line per round phase and, if `verbose`, Flower's own output.

    On a terminal `rich` styles the lines and a spinner shows the round under way; otherwise the lines
    are plain text without colour codes. Lines starting with one of ALWAYS_SHOWN are shown even when
    not verbose.
    """

    def __init__(self, verbose: bool = False, file=None):
        self.file = file or sys.stdout
        self.verbose = verbose
        self.rich = RichConsole(file=self.file, highlight=False) if self.file.isatty() else None

    def line(self, text: Text) -> None:
        if self.rich:
            self.rich.print(text)
        else:
            print(text.plain, file=self.file, flush=True)

    def flower(self, line: str) -> None:
        """One line of a run's output."""
        if self.verbose or ANSI.sub("", line).startswith(ALWAYS_SHOWN):
            self.line(Text.from_ansi(line.rstrip("\n")))

    @contextmanager
    def rounds(self, per_site: Path, total: int, label: str = "", poll: float = 1.0):
        """While the block runs, a line for each phase that appears in `per_site` (rewritten by the
        server after every phase; phases already there, from a resumed run's past, are not shown)."""
        seen = {(p.round, p.phase) for p in read_phases(per_site)}
        started = time.monotonic()
        status = self.rich.status("") if self.rich else None
        stop = threading.Event()

        def report() -> None:
            for phase in read_phases(per_site):
                if (phase.round, phase.phase) not in seen:
                    seen.add((phase.round, phase.phase))
                    self.line(progress_line(label, phase, total, time.monotonic() - started))
            if status:
                current = min(max((r for r, _ in seen), default=0) + 1, total)
                status.update(Text(f"{label + ': ' if label else ''}round {current}/{total} "
                                   f"under way, {time.monotonic() - started:.0f} s"))

        def watch() -> None:
            while not stop.wait(poll):
                report()

        watcher = threading.Thread(target=watch, daemon=True)
        if status:
            report()
            status.start()
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join()
            report()
            if status:
                status.stop()
