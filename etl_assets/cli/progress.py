"""Progress of the long commands (`demo`, `rebuild`, `replay`, `reexecute`), reported as each run or step finishes.

On a terminal it is a rich progress bar (finished of total, rows, elapsed time) with a line per finished item
printed above it. Anywhere else (a pipe, a log file, CI) it is one plain line per finished item, flushed at once, so
a log shows each run when it ends::

    [3/7] orders 2024-01-03 ok, 120 rows, 4.2 s, 12.6 s elapsed (run 1a2b3c4d)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagster import AssetMaterialization

# the UI lists a run by the first characters of its id
SHORT_RUN_ID = 8


def row_count(materialization: AssetMaterialization) -> int | None:
    """The ``dagster/row_count`` of a materialization (None when it has none)."""
    from etl_assets.monitoring.health import ROW_COUNT

    value: Any = materialization.metadata.get(ROW_COUNT)
    value = getattr(value, "value", value)
    return int(value) if isinstance(value, int | float) else None


def target_rows(materializations: Iterable[AssetMaterialization]) -> int | None:
    """Rows a run wrote to its targets (``<domain>/warehouse_*``, ``<domain>/postgres_*``): the sum of their ``dagster/row_count``;
    None when no target materialization carries one. Raw, clean and quarantine counts are left out, as they count
    the same rows again."""
    from etl_assets.keys import TARGET_PREFIXES, parse_key

    parsed = [(parse_key(m.asset_key), m) for m in materializations]
    counts = [row_count(m) for p, m in parsed if p is not None and p.stage in TARGET_PREFIXES]
    known = [c for c in counts if c is not None]
    return sum(known) if known else None


class Progress:
    """Reports each finished run (or step) of a command as it finishes: ``with Progress(7, "rebuild") as p:`` then
    :meth:`finished` once per item.

    Args:
        total: How many items the command will finish.
        title: What the command is doing, e.g. ``rebuild orders``; starts the closing line.
        unit: What an item is (``runs``, ``steps``).
        file: Where to write (default: standard output at the time the progress starts).
        terminal: Draw a rich progress bar; default: whether ``file`` is a terminal.
    """

    def __init__(
        self, total: int, title: str, unit: str = "runs", file: IO[str] | None = None, terminal: bool | None = None
    ):
        self.total = total
        self.title = title
        self.unit = unit
        self.done = 0
        self.ok = 0
        self.rows = 0
        self._file = file
        self._terminal = terminal
        self._started = time.perf_counter()
        self._bar: Any = None
        self._task: Any = None

    @property
    def file(self) -> IO[str]:
        return self._file or sys.stdout

    def __enter__(self) -> Progress:
        self._started = time.perf_counter()
        terminal = self._terminal if self._terminal is not None else self.file.isatty()
        if terminal:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TextColumn("{task.fields[rows]:,} rows"),
                TimeElapsedColumn(),
                console=Console(file=self.file, force_terminal=True),
            )
            self._task = self._bar.add_task(self.title, total=self.total, rows=0)
            self._bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        if exc_info[0] is None:
            print(
                f"{self.title}: {self.ok} of {self.total} {self.unit} ok, {self.rows:,} rows, {self.elapsed():.1f} s",
                file=self.file,
                flush=True,
            )

    def set_total(self, total: int) -> None:
        """Set how many items there are, once the command knows (a re-execution knows its steps when it starts)."""
        self.total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def elapsed(self) -> float:
        return time.perf_counter() - self._started

    def finished(
        self,
        label: str,
        success: bool,
        rows: int | None,
        seconds: float,
        run_id: str | None = None,
        note: str = "",
        counted: int | None = None,
    ) -> str:
        """Report one finished item; returns its line.

        Args:
            label: What finished, e.g. ``orders 2024-01-03``.
            success: Whether it succeeded.
            rows: Rows it wrote (None: no count is known).
            seconds: How long it took.
            run_id: The run, shown by its first characters as in the UI.
            note: The command's own figures, after a colon.
            counted: Its rows that count towards the total (default: ``rows``); a step that writes clean data
                counts none, as the target's step writes the same rows again.
        """
        self.done += 1
        self.ok += success
        self.rows += (rows if counted is None else counted) or 0
        parts = [f"[{self.done}/{self.total}] {label} {'ok' if success else 'FAILED'}"]
        if rows is not None:
            parts.append(f"{rows:,} rows")
        parts += [f"{seconds:.1f} s", f"{self.elapsed():.1f} s elapsed"]
        line = ", ".join(parts) + (f": {note}" if note else "")
        if run_id:
            line += f" (run {run_id[:SHORT_RUN_ID]})"
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
            self._bar.update(self._task, advance=1, rows=self.rows)
        else:
            print(line, file=self.file, flush=True)
        return line
