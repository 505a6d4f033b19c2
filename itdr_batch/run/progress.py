"""Progress of a scoring job: a live rich display on a terminal, periodic log lines otherwise.

The job only calls ``start``/``advance``/``finish``; where the figures go is the caller's choice
(the CLI picks by whether stderr is a terminal, a Prefect flow passes its run logger).
"""

import logging
import time
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Reporter(Protocol):
    def start(self, total: int, done: int) -> None:
        """``total`` users to process (over all tasks), ``done`` already committed (resume)."""
        ...

    def advance(self, users: int, prompts: int, tokens: int) -> None: ...

    def finish(self) -> None: ...


class Rates:
    """Users, prompts and prompt tokens since the start, per second of wall time."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.users = self.prompts = self.tokens = 0

    def add(self, users: int, prompts: int, tokens: int) -> None:
        self.users += users
        self.prompts += prompts
        self.tokens += tokens

    def text(self) -> str:
        seconds = max(time.monotonic() - self.started, 1e-9)
        text = f"{self.prompts / seconds:,.1f} prompts/s"
        # A dry run builds prompts without tokenizing them.
        return text + f", {self.tokens / seconds:,.0f} tokens/s" if self.tokens else text


class RichReporter:
    """A progress bar with users done, prompts/s, tokens/s and the time left."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("users · {task.fields[rates]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self._rates = Rates()
        self._task = self._progress.add_task("score", total=0, rates="")

    def start(self, total: int, done: int) -> None:
        self._rates = Rates()
        self._progress.update(self._task, total=total, completed=done)
        self._progress.start()

    def advance(self, users: int, prompts: int, tokens: int) -> None:
        self._rates.add(users, prompts, tokens)
        self._progress.update(self._task, advance=users, rates=self._rates.text())

    def finish(self) -> None:
        self._progress.stop()


class LogReporter:
    """A log line at most every ``interval`` seconds, and one at the end."""

    def __init__(
        self, log: logging.Logger | logging.LoggerAdapter[logging.Logger], interval: float = 10.0
    ) -> None:
        self._log = log
        self._interval = interval
        self._rates = Rates()
        self._total = self._done = 0
        self._last = 0.0

    def start(self, total: int, done: int) -> None:
        self._rates = Rates()
        self._total, self._done = total, done
        self._last = time.monotonic()
        self._log.info("scoring %d users (%d already done)", total, done)

    def advance(self, users: int, prompts: int, tokens: int) -> None:
        self._rates.add(users, prompts, tokens)
        self._done += users
        if time.monotonic() - self._last >= self._interval:
            self._line()

    def finish(self) -> None:
        self._line()

    def _line(self) -> None:
        self._last = time.monotonic()
        rates = self._rates
        per_user = (time.monotonic() - rates.started) / rates.users if rates.users else 0.0
        eta = per_user * (self._total - self._done)
        self._log.info("%d/%d users, %s, ETA %.0f s", self._done, self._total, rates.text(), eta)
