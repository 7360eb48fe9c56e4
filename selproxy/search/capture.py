"""Capture: a sample of claimed searches, as rotating JSON lines, for replay.

``--capture FILE --capture-rate 0.01`` writes one ``search`` line for about
one claimed ``_search`` in a hundred, and one ``click`` line for every click
the beacon credits (clicks are few, and ``selproxy eval interleaving`` adds
them up exactly from these lines).  What a line holds is listed in the
README ("Capture and replay"); the document texts only with
``--capture-texts``.

Writing never costs a search more than building its record and appending it
to a bounded queue: a daemon thread serialises and writes the lines.  When the
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


class CaptureWriter:
    """JSON lines written by a daemon thread into rotating files."""

    def __init__(self, path: str, max_bytes: int, backups: int, queue: int = 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.queue_limit = queue
        self._queue: Deque[Dict[str, Any]] = collections.deque()
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
        """Queue ``record`` (owned by the writer from now on); False if dropped."""
        with self._wake:
            if self._closing or len(self._queue) >= self.queue_limit:
                self.dropped += 1
                return False
            self._queue.append(record)
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
                    self._wake.wait()
                batch = list(self._queue)
                self._queue.clear()
                closing = self._closing
            for record in batch:
                self._write(record)
            if self._stream is not None:
                try:
                    self._stream.flush()
                except OSError:
                    self._failed()
            if closing:
                if self._stream is not None:
                    try:
                        self._stream.close()
                    except OSError:
                        pass
                    self._stream = None
                return

    def _write(self, record: Dict[str, Any]) -> None:
        try:
            text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            try:
                line = (text + "\n").encode("utf-8")
            except UnicodeEncodeError:
                # A lone surrogate (a document's broken text): escaped, so the
                # line stays UTF-8 and reads back as the same string.
                line = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode("ascii")
        except (TypeError, ValueError):
            self.errors += 1
            return
        if len(line) > self.max_bytes:
            self.too_large += 1
            return
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
        if self._stream is not None:
            try:
                self._stream.close()
            except OSError:
                pass
        self._stream = None
