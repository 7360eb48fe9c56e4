"""The figures of every worker of a process group, in one shared block.

The master maps the block (anonymous, ``MAP_SHARED``) before it forks, so
every worker inherits the same memory: no file, nothing to clean up, and it
is gone when the last process of the group exits.  It holds one slot per
worker index.  A worker writes only its own slot; any worker reads them all
when it answers ``/_selproxy/status``, ``/_selproxy/metrics`` or
``/_selproxy/readyz``, so each answer covers the whole group, whichever
worker took the connection.

A slot has three parts:

* **meta**: the worker's pid, state (starting, serving, stopped), whether its
  model is warm and whether it is draining.
* **cells**: the core's counters, a C struct (``_metrics.h``) that the core
  adds to in place (:meth:`selproxy._worker.Counters.attach`): counting a
  passthrough request is an add to memory, and the figure is in the block at
  once, exact, and survives the worker's death.
* **doc**: the Python layer's figures (rerank outcomes, rank durations, the
  ranker's cache and batcher statistics), as JSON the worker writes every
  :data:`PUBLISH_INTERVAL` seconds, and at once before it answers a status,
  metrics or readiness request and when it stops.  A seqlock (an even/odd
  sequence number around the write) lets readers retry a copy caught
  half-written.  A worker killed outright loses at most the last interval of
  these (never the core's, which are written in place).

Why not ``prometheus_client``'s multiprocess mode: each increment there is a
Python call writing a per-process file, microseconds the passthrough path
cannot pay (the core's counters would still need copying into it), the files
of respawned workers accumulate, and the directory must exist before the
library is imported.  Here the core's counting costs nothing more than it
did, and ``prometheus_client`` still renders the exposition
(:mod:`selproxy.metrics`).

Counters never go backwards: a worker that takes over the slot of one that
died (a respawn reuses its index) keeps counting into the same cells, and
adds the Python figures the slot held to its own (:meth:`WorkerSlot.take`).
The gauges, which describe a live process, start again at zero.
"""
from __future__ import annotations

import dataclasses
import json
import mmap
import os
import struct
import time
from typing import Any, Dict, List, Optional, Tuple

from . import _core

__all__ = ("SharedStats", "WorkerSlot", "SlotView", "PUBLISH_INTERVAL",
           "STARTING", "SERVING", "RETIRING", "STOPPED", "merge_counters", "merge_histograms")

#: Seconds between two copies of a worker's Python figures into its slot.
PUBLISH_INTERVAL = 0.5

#: RETIRING: replaced by a reload, finishing its requests; no longer one of
#: the workers the group's readiness counts (its drain is not the group's).
FREE, STARTING, SERVING, STOPPED, RETIRING = 0, 1, 2, 3, 4
STATE_NAMES = {FREE: "free", STARTING: "starting", SERVING: "serving", STOPPED: "stopped",
               RETIRING: "retiring"}

_MAGIC = b"SPSTATS1"
_HEADER = struct.Struct("<8sqqq")          # magic, capacity, expected workers, master pid
_HEADER_SIZE = 4096
# pid, state, warm, draining, started (unix time), doc sequence, doc length
_META = struct.Struct("<qqqqdQQ")
_META_SEQ = 40                             # offset of the doc sequence in the meta
_CELLS_OFFSET = 4096
_DOC_OFFSET = 8192
SLOT_SIZE = 64 * 1024
DOC_CAPACITY = SLOT_SIZE - _DOC_OFFSET
assert _core.CELLS_SIZE <= _DOC_OFFSET - _CELLS_OFFSET

#: Slots a block has at least: a reload starts new workers while the old
#: ones drain, so indices beyond ``workers`` are needed for a while.
MIN_CAPACITY = 64


@dataclasses.dataclass
class SlotView:
    """One worker's slot as read at one moment."""
    index: int
    pid: int
    state: int
    warm: bool
    draining: bool
    started: float
    alive: bool
    cells: Dict[str, Any]
    doc: Dict[str, Any]

    @property
    def state_name(self) -> str:
        return STATE_NAMES.get(self.state, "unknown")


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # "pid (comm) S ...": the state follows the last parenthesis.
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


class SharedStats:
    """The block: a header and ``capacity`` worker slots."""

    def __init__(self, memory: mmap.mmap) -> None:
        self.memory = memory
        self.view = memoryview(memory)
        magic, self.capacity, _expected, _master = _HEADER.unpack_from(memory, 0)
        if magic != _MAGIC:
            raise ValueError("not a selproxy stats block")

    @classmethod
    def create(cls, capacity: int, expected_workers: int) -> "SharedStats":
        """A new block, zeroed; make it before forking the workers."""
        capacity = max(capacity, expected_workers)
        memory = mmap.mmap(-1, _HEADER_SIZE + capacity * SLOT_SIZE,
                           flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        _HEADER.pack_into(memory, 0, _MAGIC, capacity, expected_workers, os.getpid())
        return cls(memory)

    @classmethod
    def for_workers(cls, workers: int) -> "SharedStats":
        return cls.create(max(MIN_CAPACITY, 4 * workers), workers)

    @property
    def expected_workers(self) -> int:
        return int(_HEADER.unpack_from(self.memory, 0)[2])

    @expected_workers.setter
    def expected_workers(self, count: int) -> None:
        """The master says how many workers should serve (readiness waits
        for that many); a reload with a new ``workers`` changes it."""
        magic, capacity, _old, master = _HEADER.unpack_from(self.memory, 0)
        _HEADER.pack_into(self.memory, 0, magic, capacity, count, master)

    def slot(self, index: int) -> "WorkerSlot":
        if not 0 <= index < self.capacity:
            raise ValueError(f"worker index {index} is outside the stats block's "
                             f"{self.capacity} slots")
        return WorkerSlot(self, index)

    def read(self) -> List[SlotView]:
        """Every slot a worker has used, in index order."""
        views = []
        for index in range(self.capacity):
            view = self.slot(index).read()
            if view is not None:
                views.append(view)
        return views


class WorkerSlot:
    """One worker index's part of the block."""

    def __init__(self, block: SharedStats, index: int) -> None:
        self.block = block
        self.index = index
        self.offset = _HEADER_SIZE + index * SLOT_SIZE
        self.cells = block.view[self.offset + _CELLS_OFFSET:self.offset + _DOC_OFFSET]
        #: What the slot's earlier owners counted in Python: added to ours.
        self.base: Dict[str, Any] = {}

    # -- the owner's side ------------------------------------------------

    def take(self, pid: int) -> None:
        """Make the slot this process's.  A slot used before (a respawn, or
        a reload reusing an index) keeps its counts: the core goes on adding
        to its cells, and its last Python figures become this worker's base."""
        old = self._meta()
        if old[1] != FREE:
            doc = self._read_doc()
            self.base = {key: doc.get(key, []) for key in ("counters", "histograms")}
        self._set_meta(pid=pid, state=STARTING, warm=0, draining=0, started=time.time())

    def set_state(self, state: int) -> None:
        self._set_meta(state=state)

    def set_warm(self, warm: bool) -> None:
        self._set_meta(warm=int(warm))

    def set_draining(self, draining: bool) -> None:
        self._set_meta(draining=int(draining))

    def publish(self, doc: Dict[str, Any]) -> None:
        """Write this worker's Python figures (with the base added)."""
        doc = dict(doc)
        if self.base:
            doc["counters"] = merge_counters(self.base.get("counters", []), doc.get("counters", []))
            doc["histograms"] = merge_histograms(self.base.get("histograms", []),
                                                 doc.get("histograms", []))
        data = json.dumps(doc, separators=(",", ":")).encode()
        if len(data) > DOC_CAPACITY:
            # Never torn: the figures that fit, the per-worker section dropped.
            doc.pop("search", None)
            data = json.dumps(doc, separators=(",", ":")).encode()[:DOC_CAPACITY]
        memory, start = self.block.memory, self.offset
        seq = struct.unpack_from("<Q", memory, start + _META_SEQ)[0]
        struct.pack_into("<Q", memory, start + _META_SEQ, seq + 1)        # odd: writing
        struct.pack_into("<Q", memory, start + _META_SEQ + 8, len(data))
        memory[start + _DOC_OFFSET:start + _DOC_OFFSET + len(data)] = data
        struct.pack_into("<Q", memory, start + _META_SEQ, seq + 2)        # even: done

    # -- anyone's side ---------------------------------------------------

    def read(self) -> Optional[SlotView]:
        pid, state, warm, draining, started, _seq, _len = self._meta()
        if state == FREE:
            return None
        return SlotView(self.index, pid, state, bool(warm), bool(draining), started,
                        state != STOPPED and _pid_alive(pid),
                        _core.read_cells(self.cells), self._read_doc())

    def _meta(self) -> Tuple[Any, ...]:
        return _META.unpack_from(self.block.memory, self.offset)

    def _set_meta(self, **changes: Any) -> None:
        pid, state, warm, draining, started, seq, length = self._meta()
        values = dict(pid=pid, state=state, warm=warm, draining=draining, started=started)
        values.update(changes)
        # The doc's sequence and length are the publisher's: left as they are.
        struct.pack_into("<qqqqd", self.block.memory, self.offset, values["pid"], values["state"],
                         values["warm"], values["draining"], values["started"])

    def _read_doc(self) -> Dict[str, Any]:
        memory, start = self.block.memory, self.offset
        for _attempt in range(100):
            seq = struct.unpack_from("<Q", memory, start + _META_SEQ)[0]
            if seq % 2:
                time.sleep(0)        # its owner is writing it: let it finish
                continue
            length = struct.unpack_from("<Q", memory, start + _META_SEQ + 8)[0]
            data = bytes(memory[start + _DOC_OFFSET:start + _DOC_OFFSET + min(length, DOC_CAPACITY)])
            if struct.unpack_from("<Q", memory, start + _META_SEQ)[0] == seq:
                if not data:
                    return {}
                try:
                    doc = json.loads(data)
                except ValueError:
                    return {}
                return doc if isinstance(doc, dict) else {}
        return {}


def _key(name: str, labels: Dict[str, str]) -> Tuple[str, Tuple[Tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def merge_counters(*lists: List[List[Any]]) -> List[List[Any]]:
    """``[name, labels, value]`` rows, summed by (name, labels)."""
    merged: Dict[Any, List[Any]] = {}
    for rows in lists:
        for name, labels, value in rows:
            key = _key(name, labels)
            if key in merged:
                merged[key][2] += value
            else:
                merged[key] = [name, dict(labels), value]
    return list(merged.values())


def merge_histograms(*lists: List[List[Any]]) -> List[List[Any]]:
    """``[name, labels, per-bucket counts, sum]`` rows, summed by (name, labels)."""
    merged: Dict[Any, List[Any]] = {}
    for rows in lists:
        for name, labels, counts, total in rows:
            key = _key(name, labels)
            if key in merged:
                row = merged[key]
                row[2] = [a + b for a, b in zip(row[2], counts)]
                row[3] += total
            else:
                merged[key] = [name, dict(labels), list(counts), total]
    return list(merged.values())
