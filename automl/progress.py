"""One home for progress: the bars the CLI shows, as events a service can stream, and cancellation.

Every progress bar of the package is ``bar(...)`` (a ``tqdm.auto.tqdm`` that also reports), every
status line ``note(...)``, every named step of a job ``stage(...)``; long loops without a bar call
``checkpoint()`` between steps. Code running inside ``listen(callback)`` hands each of these to
``callback`` as an ``Event``, whether the bar is shown or not. A callback stops the work by raising
``Cancelled`` (or any exception): it propagates from the bar's update, the note or the checkpoint into
the code that made it, at a step boundary, where the store is as a Ctrl-C there would leave it (the
cache keeps finished embeddings, the study counts the running trial as interrupted, no run folder is
written), so running the job again reuses what was finished.

Listeners and the current stage live in context variables: a thread sees them only when started
with a copy of the context (``contextvars.copy_context().run``). The package reports from the
thread that runs each loop (decoding and fold threads report nothing), and worker processes never.

Imports nothing of the project but ``errors`` and ``_files``.
"""

from __future__ import annotations

import sys
import time as _time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

from tqdm.auto import tqdm

from automl._files import json_values
from automl.errors import AutomlError

_LISTENERS: ContextVar[tuple] = ContextVar("automl_progress_listeners", default=())
_STAGE: ContextVar[str | None] = ContextVar("automl_progress_stage", default=None)


@dataclass(frozen=True)
class Event:
    """What a listener is told. ``kind``: "stage" (a stage ``started``, ``finished`` or ``failed``),
    "progress" (a bar moved, or a ``checkpoint`` without a bar: no desc, done or total) or "note"
    (a status line, in ``desc``)."""

    kind: str
    stage: str | None  # the innermost enclosing stage()
    desc: str = ""  # the bar's description, the note's text
    state: str | None = None  # stage: started | finished | failed; a bar's last event: closed
    done: float | None = None
    total: float | None = None
    unit: str | None = None
    elapsed_s: float | None = None  # since the bar was made (or reset), or the stage started
    eta_s: float | None = None  # (total - done) / the bar's rate, where it has both
    info: dict = field(default_factory=dict)  # the bar's postfix, the note's fields; JSON values only
    time: float = field(default_factory=_time.time)

    def to_dict(self) -> dict:
        return asdict(self)


class Cancelled(AutomlError):
    """Raised by a listener to stop the work it listens to; the work stops as at a Ctrl-C."""

    def __init__(self, message: str = "cancelled"):
        super().__init__(message)


@contextmanager
def listen(callback: Callable[[Event], None]) -> Iterator[None]:
    """Hand every event made inside the block to ``callback``, after the enclosing blocks' listeners
    (outermost first). What ``callback`` raises propagates into the code that made the event."""
    token = _LISTENERS.set(_LISTENERS.get() + (callback,))
    try:
        yield
    finally:
        _LISTENERS.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """A named stage of a job: events "started", then "finished" or, on an exception (re-raised),
    "failed" with the exception's type in ``info["error"]``. Bars and notes inside carry ``name``."""
    token = _STAGE.set(name)
    began = _time.monotonic()
    try:
        _tell(Event("stage", name, state="started"))
        try:
            yield
        except BaseException as exc:
            _tell(Event("stage", name, state="failed", elapsed_s=_time.monotonic() - began,
                        info={"error": type(exc).__name__}))
            raise
        _tell(Event("stage", name, state="finished", elapsed_s=_time.monotonic() - began))
    finally:
        _STAGE.reset(token)


def note(text: str, *, echo: bool = False, **info) -> None:
    """A status line: an event with ``text`` and ``info``; ``echo`` also writes it to stderr beside
    the bars (``tqdm.write``), as the CLI shows it."""
    if echo:
        tqdm.write(text, file=sys.stderr)
    if _LISTENERS.get():
        _tell(Event("note", _STAGE.get(), desc=text, info=_json(info)))


def checkpoint() -> None:
    """A step boundary of a loop without a bar: a bare "progress" event, where a listener may cancel."""
    if _LISTENERS.get():
        _tell(Event("progress", _STAGE.get()))


def bar(iterable=None, *, desc: str = "", total=None, unit: str = "it", disable: bool = False,
        **tqdm_kwargs) -> "Bar":
    """``tqdm.auto.tqdm(iterable, desc=..., total=..., unit=..., disable=..., **tqdm_kwargs)``, the same
    bar on the terminal, that also reports to the listeners, shown or not (see ``Bar``)."""
    return Bar(iterable, desc=desc, total=total, unit=unit, disable=disable, **tqdm_kwargs)


class Bar(tqdm):
    """A tqdm bar that reports an event when made, on every ``update``, ``reset``, ``set_postfix``,
    ``set_postfix_str`` and ``set_description`` (those with ``refresh=False`` are carried by the next
    event, as the terminal shows them at the next refresh), on each item when iterated, and when
    closed (``state="closed"``). A disabled bar counts ``n`` too (a disabled tqdm does not).

    ``info``, what the events carry, is the postfix's fields (``set_postfix``), ``{"postfix": s}``
    (``set_postfix_str(s)``), or the ``info=`` given to ``set_postfix_str``. A bar the garbage
    collector closes reports nothing: no event at an arbitrary point of the program."""

    def __init__(self, iterable=None, desc=None, total=None, **kwargs):
        self._reporting = False
        self._closed = False
        self._label = desc or ""
        self._unit = kwargs.get("unit", "it")
        self._start = kwargs.get("initial", 0)
        self._began = _time.monotonic()
        self.info: dict = _json(kwargs.get("postfix")) if isinstance(kwargs.get("postfix"), dict) else {}
        super().__init__(iterable, desc=desc, total=total, **kwargs)
        self._reporting = True
        self._report()

    def __iter__(self):
        # One update per item, where tqdm's own loop skips update() between refreshes (and walks a
        # disabled bar without counting): the terminal sees the same refreshes, the listeners every item.
        try:
            for obj in self.iterable:
                yield obj
                self.update(1)
        finally:
            self.close()

    def update(self, n=1):
        counted = self.disable  # tqdm counts only what it shows
        displayed = super().update(n)
        if counted:
            self.n += n
        self._report()
        return displayed

    def reset(self, total=None):
        super().reset(total)
        self._start = 0
        self._began = _time.monotonic()
        self._report()

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh, **kwargs)
        self.info = _json({**(ordered_dict or {}), **kwargs})
        if refresh:
            self._report()

    def set_postfix_str(self, s="", refresh=True, *, info: dict | None = None):
        super().set_postfix_str(s, refresh)
        self.info = _json({"postfix": str(s)} if info is None else info)
        if refresh:
            self._report()

    def set_description(self, desc=None, refresh=True):
        super().set_description(desc, refresh)
        self._label = desc or ""
        if refresh:
            self._report()

    def set_description_str(self, desc=None, refresh=True):
        super().set_description_str(desc, refresh)
        self._label = desc or ""
        if refresh:
            self._report()

    def close(self):
        closing = not self._closed
        self._closed = True
        super().close()
        if closing:
            self._report("closed")

    def __del__(self):
        self._closed = True
        super().__del__()

    def _report(self, state: str | None = None) -> None:
        if not self._reporting or not _LISTENERS.get():
            return
        elapsed = _time.monotonic() - self._began
        rate = self._rate(elapsed)
        total = self.total
        eta = max(0.0, (total - self.n) / rate) if total is not None and rate else None
        _tell(Event("progress", _STAGE.get(), desc=self._label, state=state, done=self.n, total=total,
                    unit=self._unit, elapsed_s=elapsed, eta_s=eta, info=dict(self.info)))

    def _rate(self, elapsed: float) -> float | None:
        """Units a second: tqdm's smoothed rate where the bar is shown and has one, else the average
        since the bar started (what tqdm's own display falls back to)."""
        if not self.disable:
            rate = self.format_dict.get("rate")
            if rate:
                return rate
        done = self.n - self._start
        return done / elapsed if done > 0 and elapsed > 0 else None


def _json(value):
    """``value`` with only JSON types inside (``json_values``); anything else becomes its ``str``."""
    return json_values(value, str)


def _tell(event: Event) -> None:
    for callback in _LISTENERS.get():
        callback(event)

