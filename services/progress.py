"""Rich progress bars for the ``progress(step, done, total)`` callbacks of the pipelines.

The compute cores report progress through a plain callable so that they stay free of
any display library; this adapter shows one bar per step, created when the step
first reports, in the order the steps run.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class StepProgress:
    """``progress(step, done, total)`` shown as rich progress bars, one per step.

    Use as a context manager around the pipeline call::

        with StepProgress(console, "process cci") as progress:
            process_cci(client, uid, progress=progress)
    """

    def __init__(self, console: Console | None = None, title: str = "") -> None:
        self._progress = Progress(
            TextColumn("{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
        )
        self._tasks: dict[str, TaskID] = {}
        self._title = title

    def __enter__(self) -> Self:
        if self._title:
            self._progress.console.print(f"[bold]{self._title}[/bold]")
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def __call__(self, step: str, done: int, total: int) -> None:
        task = self._tasks.get(step)
        if task is None:
            task = self._tasks[step] = self._progress.add_task(step, total=max(int(total), 1), info="")
        self._progress.update(task, completed=int(done), total=max(int(total), 1))

    def info(self, step: str, text: str) -> None:
        """Show ``text`` (e.g. the current loss) beside the bar of ``step``."""
        task = self._tasks.get(step)
        if task is not None:
            self._progress.update(task, info=text)
