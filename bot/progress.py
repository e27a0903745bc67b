"""Progress on the terminal: a bar on a TTY, plain timestamped lines anywhere else (CI logs, pipes, files).

tqdm draws the bar: huggingface_hub already depends on it and draws its download bars with it, so both look alike
and nothing is added to the install; it also imports in about a third of the time rich.progress takes (README,
"Terminal output"). The pipeline only ever calls a `Progress` callback with a message (bot.pipeline); a callback
that also has `steps(total)` and `advance()` gets the step count, which is what turns messages into a bar.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI runner cancelling, a service stopping) unwinds like Ctrl-C: staging folders are removed."""


STOP = threading.Event()  # set by bot.cli's SIGTERM handler


def terminate(signum=None, frame=None) -> None:
    """The SIGTERM handler. Python raises a handler's exception wherever the main thread is, and when that is a
    finalizer (`__del__`, run by the garbage collector) the exception is printed and ignored: so the request is
    also recorded, and the next progress message raises it again."""
    STOP.set()
    raise Terminated()


class Reporter:
    """A `Progress` callback for people: on a TTY a tqdm bar over the planned steps with the current one beside
    it, else one `[  12.3s] message` line per message."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.started = time.perf_counter()
        self.bar = None

    def __call__(self, message: str) -> None:
        if STOP.is_set():
            raise Terminated()
        if self.bar is not None:
            self.bar.set_postfix_str(" ".join(message.split()), refresh=True)
        else:
            self.stream.write(f"[{time.perf_counter() - self.started:6.1f}s] {message}\n")
            self.stream.flush()

    def steps(self, total: int, unit: str = "feature") -> None:
        """The pipeline planned `total` steps: on a TTY, start the bar."""
        if self.tty and self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=f" {unit}", desc="export", file=self.stream, dynamic_ncols=True,
                            bar_format="{desc}: {n_fmt}/{total_fmt}{unit} |{bar}| {elapsed} {postfix}")

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def steps(say, total: int, unit: str = "feature") -> None:
    """Tell a Progress callback how many steps follow, if it wants to know."""
    if hasattr(say, "steps"):
        say.steps(total, unit)


def advance(say) -> None:
    if hasattr(say, "advance"):
        say.advance()
