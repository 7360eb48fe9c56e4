"""Capture: a sample of claimed searches, as rotating JSON lines, for replay.

``--capture FILE --capture-rate 0.01`` writes one ``search`` line for about
one claimed ``_search`` in a hundred, and one ``click`` line for every click
the beacon credits (clicks are few, and ``selproxy eval interleaving`` adds
them up exactly from these lines).  What a line holds is listed in the
README ("Capture and replay"); the document texts only with
``--capture-texts``.

Writing never costs a search more than building and encoding its record and
appending it to a bounded queue: a daemon thread writes the lines.  When the
queue is full (a disk slower than the traffic) a record is dropped and
counted, never waited for; a write error (a full disk, a removed directory) is
counted and the file is opened again for the next line.  Files rotate as
:class:`logging.handlers.RotatingFileHandler` does: past ``max_bytes`` the
file becomes ``FILE.1``, ``FILE.1`` becomes ``FILE.2`` and so on, and the
oldest past ``backups`` is deleted, so the capture never holds more than
``(backups + 1) * max_bytes`` bytes.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import random
import threading
from typing import Any, Deque, Dict, Optional

from . import _json

__all__ = ("CaptureConfig", "CaptureWriter", "Sampler")

log = logging.getLogger("selproxy.capture")


@dataclasses.dataclass(frozen=True)
class CaptureConfig:
    """``--capture FILE`` and its bounds."""

    #: The file; ``{pid}`` in it is replaced by the worker's process id (the
    #: command line adds it when ``--workers`` is above 1: one file per worker).
    path: str
    #: Share of claimed searches captured, 0..1.
    rate: float = 0.01
    #: Bytes per file before it rotates.
    max_bytes: int = 64 << 20
    #: Rotated files kept (``FILE.1`` .. ``FILE.N``).
    backups: int = 4
    #: Whether lines hold the documents' texts (off: only their hashes).
    texts: bool = False
    #: Seed of the sampling; None: unpredictable.
    seed: Optional[int] = None
    #: Records waiting for the writer thread; past it they are dropped.
    queue: int = 1024
    #: The HMAC key of result-set ids when only capture is on (see
    #: :class:`~selproxy.search.interleave.InterleaveConfig`).
    secret: bytes = dataclasses.field(default_factory=lambda: os.urandom(32), repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("capture_rate must be within 0..1")
        if self.max_bytes < 1024 or self.backups < 0 or self.queue < 1:
            raise ValueError("capture_max_bytes must be >= 1024, capture_backups >= 0")

    def resolved_path(self) -> str:
        return self.path.replace("{pid}", str(os.getpid()))


class Sampler:
    """Bernoulli sampling with its own RNG (seeded: the same searches are
    captured on every run)."""

    def __init__(self, rate: float, seed: Optional[int]) -> None:
        self.rate = rate
        self._random = random.Random(seed).random if seed is not None else random.SystemRandom().random

    def __call__(self) -> bool:
        return self.rate >= 1.0 or (self.rate > 0.0 and self._random() < self.rate)


#: The writer thread writes what is queued at most this long after it came
#: (or at once when the queue is half full): one wake-up, one GIL hand-over
#: and one flush for many lines, not one per search.
FLUSH_SECONDS = 0.1
#: Bytes queued at most, whatever the number of lines.
MAX_QUEUED_BYTES = 8 << 20


def encode_line(record: Dict[str, Any]) -> bytes:
    """One JSON line, UTF-8.  A lone surrogate (a document's broken text)
    is escaped, so the line stays UTF-8 and reads back as the same string."""
    try:
        return _json.dumps(record) + b"\n"
    except (ValueError, TypeError):
        return (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode("ascii")


class CaptureWriter:
    """JSON lines written by a daemon thread into rotating files.

    PERF: a record is encoded where it is put (on the loop: tens of
    microseconds for a 50-hit window with orjson, bounded by the window), and
    the thread only writes bytes, which releases the GIL.  Encoding on the
    thread instead cost the loop more: under CPU contention each hand-over
    of the GIL to a busy writer stalled a search by milliseconds.
    """

    def __init__(self, path: str, max_bytes: int, backups: int, queue: int = 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.queue_limit = queue
        self._queue: Deque[bytes] = collections.deque()
        self._queued_bytes = 0
        self._wake = threading.Condition()
        self._closing = False
        self._stream: Any = None
        self._size = 0
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self.too_large = 0
        self.rotations = 0
        self._thread = threading.Thread(target=self._run, name="selproxy-capture", daemon=True)
        self._thread.start()

    # -- the loop's side: never blocks ----------------------------------------

    def put(self, record: Dict[str, Any]) -> bool:
        """Queue ``record`` as a line; False if it was dropped."""
        try:
            line = encode_line(record)
        except (ValueError, TypeError):
            self.errors += 1
            return False
        if len(line) > self.max_bytes:
            self.too_large += 1
            return False
        with self._wake:
            if (self._closing or len(self._queue) >= self.queue_limit
                    or self._queued_bytes + len(line) > MAX_QUEUED_BYTES):
                self.dropped += 1
                return False
            self._queue.append(line)
            self._queued_bytes += len(line)
            if len(self._queue) == 1 or len(self._queue) * 2 >= self.queue_limit:
                self._wake.notify()
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (within ``timeout``), then stop the thread."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)

    def snapshot(self) -> Dict[str, Any]:
        return {"file": self.path, "written": self.written, "dropped": self.dropped,
                "errors": self.errors, "too_large": self.too_large, "rotations": self.rotations,
                "queued": len(self._queue)}

    # -- the writer thread ---------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._wake.wait()  # idle until a first line (or the close)
                if not self._closing and len(self._queue) * 2 < self.queue_limit:
                    self._wake.wait(FLUSH_SECONDS)  # more lines come: one flush for them all
                batch = list(self._queue)
                self._queue.clear()
                self._queued_bytes = 0
                closing = self._closing
            for line in batch:
                self._write(line)
            if batch and self._stream is not None:
                try:
                    self._stream.flush()
                except OSError as exc:
                    self._failed(exc)
            if closing:
                self._close_quietly()
                return

    def _write(self, line: bytes) -> None:
        try:
            if self._stream is None:
                self._open()
            if self._size and self._size + len(line) > self.max_bytes:
                self._rotate()
            self._stream.write(line)
            self._size += len(line)
            self.written += 1
        except OSError as exc:
            self._failed(exc)

    def _open(self) -> None:
        self._stream = open(self.path, "ab")
        self._size = self._stream.tell()

    def _rotate(self) -> None:
        self._stream.close()
        self._stream = None
        if self.backups > 0:
            for n in range(self.backups - 1, 0, -1):
                older = f"{self.path}.{n}"
                if os.path.exists(older):
                    os.replace(older, f"{self.path}.{n + 1}")
            os.replace(self.path, f"{self.path}.1")
        else:
            os.remove(self.path)
        self.rotations += 1
        self._open()

    def _failed(self, exc: Optional[BaseException] = None) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 1000 == 0:
            log.warning("capture %s: write failed (%d so far): %s", self.path, self.errors,
                        type(exc).__name__ if exc is not None else "flush")
        self._close_quietly()

    def _close_quietly(self) -> None:
        """Close the file if it is open: its lines were flushed, or counted as
        failed, before, so an error closing it has nothing more to report."""
        if self._stream is not None:
            try:
                self._stream.close()
            except OSError:
                pass
            self._stream = None
