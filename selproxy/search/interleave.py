"""Team-draft interleaving between two rankers, and the click credit that scores it.

``--interleave A,B`` shows each claimed search one page merged from two
rankings of the same window (an arm is a ranker spec, or ``engine`` for the
engine's own order).  The merge is team-draft interleaving, exactly as
Radlinski, Kurup and Joachims give it ("How does clickthrough data reflect
retrieval quality?", CIKM 2008, Algorithm 2)::

    while some a in A is not in I and some b in B is not in I:
        if |TeamA| < |TeamB| or (|TeamA| == |TeamB| and RandBit() == 1):
            take A's highest hit not yet in I; it joins TeamA
        else:
            take B's highest hit not yet in I; it joins TeamB

so that every prefix of the page holds as many hits of one team as of the
other, give or take one, and each hit belongs to exactly one team.  A click
on a hit credits the team that contributed it; per result set the team with
more clicked hits wins, equal counts (with at least one click) are a tie.

The arms' assignment for the hits shown travels in the result-set id
(``X-Selproxy-Result-Set``): a token signed with HMAC-SHA256 under a secret
the proxy makes at start, before its workers fork, so that **any worker can
credit a click statelessly**, whichever worker served the search.  It holds
the time it was issued, a random 64-bit nonce (the result set's name in logs
and in the open-set map), the page's offset, one team bit per shown hit and a
32-bit digest of each shown hit's ``_id`` (so the beacon names a hit by its
``_id``, not by a position a page could lie about).  For the 64 positions it
credits at most it is 396 characters; a page of 10 is 100.

Per result set the clicks are added up in a map of open result sets, bounded
in entries (the oldest is dropped first) and in time (a token older than the
TTL is refused, and its entry leaves the map).  That map is per worker: with
``--workers N`` the clicks of one result set that land on two workers are
two partial tallies on two status pages; the capture's click lines (one per
credited click, with the nonce and the arm) add up exactly across workers,
and ``selproxy eval interleaving`` reads those.
"""
from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import hashlib
import hmac
import os
import random
import struct
import time
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Set, Tuple, TypeVar

__all__ = ("InterleaveConfig", "team_draft", "TeamDraft", "ResultSetToken", "TokenError",
           "ClickBook", "page_in_order", "id_digest", "MAX_CREDITED", "ENGINE_ARM")

K = TypeVar("K", bound=Hashable)

#: The arm that stands for the engine's own order.
ENGINE_ARM = "engine"
#: Shown positions a result set credits (one team bit and one digest each):
#: a click further down a longer page, or on a hit past the interleaved
#: window, is refused as not credited.
MAX_CREDITED = 64
#: Longest result-set id the click beacon accepts, in characters.
MAX_TOKEN_CHARS = 512

_TOKEN_VERSION = 1
_HEAD = struct.Struct(">BBIQHB")  # version, flags, issued (s), nonce, offset, shown
_TAG_BYTES = 16
_DIGEST_BYTES = 4
FLAG_INTERLEAVED = 1


@dataclasses.dataclass(frozen=True)
class InterleaveConfig:
    """``--interleave A,B`` and its bounds."""

    #: The two arms: ranker specs, or ``engine`` for the engine's order.
    arms: Tuple[str, str]
    #: The spec ``--ranker`` names: an arm equal to it (or ``ranker``) uses
    #: the proxy's own ranker, options included, instead of building another.
    primary: Optional[str] = None
    #: Open result sets kept per worker for adding up their clicks.
    max_open: int = 10000
    #: Seconds a result-set id is good for clicks.
    ttl: float = 1800.0
    #: Seed of the per-result-set coin flips; None: unpredictable.
    seed: Optional[int] = None
    #: The HMAC key of result-set ids.  Made once, before workers fork, so
    #: that every worker of one proxy reads every other's ids.
    secret: bytes = dataclasses.field(default_factory=lambda: os.urandom(32), repr=False)

    def __post_init__(self) -> None:
        if len(self.arms) != 2 or not all(isinstance(a, str) and a for a in self.arms):
            raise ValueError("interleave needs two arms, A,B")
        if self.arms[0] == self.arms[1]:
            raise ValueError("interleave needs two different arms")
        if self.max_open < 1:
            raise ValueError("interleave_max_open must be positive")
        if self.ttl <= 0:
            raise ValueError("interleave_ttl must be positive")
        if len(self.secret) < 16:
            raise ValueError("the interleaving secret needs at least 16 bytes")


# -- the merge (sans-io) ---------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TeamDraft:
    """An interleaved list and the team (0 for A, 1 for B) of each of its items."""

    order: Tuple[Any, ...]
    teams: Tuple[int, ...]


def team_draft(a: Sequence[K], b: Sequence[K], rand_bit: Callable[[], int]) -> TeamDraft:
    """Team-draft interleaving of rankings ``a`` and ``b`` (Algorithm 2 of
    Radlinski et al. 2008).  ``rand_bit()`` returns 0 or 1; it is asked on
    every round, as in the paper, and decides only when the teams are level.
    An item repeated within a ranking, or already taken from the other one,
    is skipped.  It stops once either ranking has nothing left to give, so
    with two orders of the same window the result is that whole window."""
    taken: Set[K] = set()
    order: List[K] = []
    teams: List[int] = []
    sizes = [0, 0]
    cursors = [0, 0]
    rankings = (a, b)

    def advance(team: int) -> bool:
        ranking = rankings[team]
        while cursors[team] < len(ranking) and ranking[cursors[team]] in taken:
            cursors[team] += 1
        return cursors[team] < len(ranking)

    while advance(0) and advance(1):
        coin = rand_bit()
        team = 0 if sizes[0] < sizes[1] or (sizes[0] == sizes[1] and coin == 1) else 1
        item = rankings[team][cursors[team]]
        taken.add(item)
        order.append(item)
        teams.append(team)
        sizes[team] += 1
    return TeamDraft(tuple(order), tuple(teams))


def page_in_order(hits: List[Dict[str, Any]], order: Sequence[int], offset: int, size: int,
                  explain: bool, source_filter: Any, teams: Optional[Sequence[int]] = None,
                  arm_names: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """The client's page of ``hits`` taken in ``order`` (window positions),
    then the hits past the window in engine order.  Scores stay the engine's:
    an interleaved page mixes two rankers whose scores do not compare."""
    full = list(order) + list(range(len(order), len(hits)))
    page = []
    for n in range(offset, min(offset + size, len(full))):
        i = full[n]
        hit = hits[i]
        if explain:
            note: Dict[str, Any] = {"engine_rank": i, "engine_score": hit.get("_score")}
            if teams is not None and n < len(teams):
                note["arm"] = arm_names[teams[n]] if arm_names else teams[n]
            hit["_selproxy"] = note
        if source_filter is not None:
            source_filter.apply(hit)
        page.append(hit)
    return page


def ranked_order(scores: Optional[Sequence[float]], window: int) -> List[int]:
    """Window positions in an arm's order, as the proxy's pages sort them:
    the scored prefix highest first (ties in engine order), then the rest
    in engine order; no scores: engine order."""
    if scores is None:
        return list(range(window))
    n = min(window, len(scores))
    order = sorted(range(n), key=scores.__getitem__, reverse=True)
    order.extend(range(n, window))
    return order


# -- result-set ids ---------------------------------------------------------------

class TokenError(ValueError):
    """A result-set id that is malformed, forged or expired (``reason`` says which)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def id_digest(doc_id: str) -> bytes:
    return hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=_DIGEST_BYTES).digest()


@dataclasses.dataclass(frozen=True)
class ResultSetToken:
    """What a result-set id carries."""

    nonce: int
    issued: int
    offset: int
    #: One team (0 = A, 1 = B) per shown position; empty when not interleaved.
    teams: Tuple[int, ...]
    digests: Tuple[bytes, ...]
    interleaved: bool = True

    @property
    def name(self) -> str:
        """The result set's name in logs and maps: its nonce, in hex."""
        return f"{self.nonce:016x}"

    def encode(self, secret: bytes) -> str:
        shown = len(self.digests)
        bits = bytearray((shown + 7) // 8)
        for position, team in enumerate(self.teams):
            if team:
                bits[position // 8] |= 1 << (position % 8)
        payload = (_HEAD.pack(_TOKEN_VERSION, FLAG_INTERLEAVED if self.interleaved else 0,
                              self.issued & 0xFFFFFFFF, self.nonce, min(self.offset, 0xFFFF), shown)
                   + bytes(bits) + b"".join(self.digests))
        tag = hmac.new(secret, payload, hashlib.sha256).digest()[:_TAG_BYTES]
        return base64.urlsafe_b64encode(payload + tag).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, text: str, secret: bytes) -> "ResultSetToken":
        if not isinstance(text, str) or not 0 < len(text) <= MAX_TOKEN_CHARS or not text.isascii():
            raise TokenError("malformed")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise TokenError("malformed") from None
        if len(raw) < _HEAD.size + _TAG_BYTES:
            raise TokenError("malformed")
        payload, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
        expected = hmac.new(secret, payload, hashlib.sha256).digest()[:_TAG_BYTES]
        if not hmac.compare_digest(tag, expected):
            raise TokenError("forged")
        version, flags, issued, nonce, offset, shown = _HEAD.unpack_from(payload)
        body = payload[_HEAD.size:]
        width = (shown + 7) // 8
        if version != _TOKEN_VERSION or shown > MAX_CREDITED or len(body) != width + shown * _DIGEST_BYTES:
            raise TokenError("malformed")
        interleaved = bool(flags & FLAG_INTERLEAVED)
        teams = tuple((body[p // 8] >> (p % 8)) & 1 for p in range(shown)) if interleaved else ()
        digests = tuple(body[width + p * _DIGEST_BYTES: width + (p + 1) * _DIGEST_BYTES]
                        for p in range(shown))
        return cls(nonce, issued, offset, teams, digests, interleaved)

    def position_of(self, doc_id: str) -> Optional[int]:
        """The shown position (0-based, within the page) of the hit ``doc_id``."""
        digest = id_digest(doc_id)
        for position, known in enumerate(self.digests):
            if known == digest:
                return position
        return None


class CoinSource:
    """Per result set, a seed for its own RNG: reproducible from ``seed``
    (the n-th result set of a worker gets the same coins on every run),
    unpredictable without one."""

    def __init__(self, seed: Optional[int]) -> None:
        self._seeds = random.Random(seed) if seed is not None else random.SystemRandom()

    def next_seed(self) -> int:
        return self._seeds.getrandbits(63)

    @staticmethod
    def coins(seed: int) -> Callable[[], int]:
        rng = random.Random(seed)
        return lambda: rng.getrandbits(1)


# -- click credit -------------------------------------------------------------------

class _OpenSet:
    __slots__ = ("issued", "clicked", "per_team")

    def __init__(self, issued: int) -> None:
        self.issued = issued
        self.clicked: Set[int] = set()
        self.per_team = [0, 0]

    def outcome(self) -> Optional[int]:
        """0: A wins, 1: B wins, 2: tie; None before any credited click."""
        a, b = self.per_team
        if a == b == 0:
            return None
        return 0 if a > b else 1 if b > a else 2


class ClickBook:
    """Clicks added up per result set, in a map bounded in size and age,
    and the running tally of wins, losses and ties per arm.

    A result set enters the map at its first credited click.  Its outcome is
    counted from then on and updated by each later click, so the tally is
    always current; an entry that leaves the map (too old, or the oldest when
    the map is full) keeps its last outcome in the tally and takes no more
    clicks.  The same hit clicked again credits nothing more."""

    def __init__(self, max_open: int, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.max_open = max_open
        self.ttl = ttl
        self.clock = clock
        self._open: "collections.OrderedDict[int, _OpenSet]" = collections.OrderedDict()
        self.outcomes = [0, 0, 0]  # A wins, B wins, ties
        self.credited = [0, 0]
        self.repeats = 0
        self.evicted = 0

    def _expire(self, now: float) -> None:
        while self._open:
            nonce, entry = next(iter(self._open.items()))
            if now - entry.issued <= self.ttl:
                break
            del self._open[nonce]

    def credit(self, token: ResultSetToken, position: int) -> Optional[int]:
        """Credit a click on shown ``position`` of ``token``: the team credited,
        or None for a repeat.  The caller has checked the token's age."""
        now = self.clock()
        self._expire(now)
        entry = self._open.get(token.nonce)
        if entry is None:
            if len(self._open) >= self.max_open:
                self._open.popitem(last=False)
                self.evicted += 1
            entry = self._open[token.nonce] = _OpenSet(token.issued)
        if position in entry.clicked:
            self.repeats += 1
            return None
        before = entry.outcome()
        team = token.teams[position]
        entry.clicked.add(position)
        entry.per_team[team] += 1
        self.credited[team] += 1
        after = entry.outcome()
        if before is not None:
            self.outcomes[before] -= 1
        if after is not None:
            self.outcomes[after] += 1
        return team

    def __len__(self) -> int:
        return len(self._open)

    def snapshot(self, arm_names: Sequence[str]) -> Dict[str, Any]:
        a_wins, b_wins, ties = self.outcomes
        arms = {}
        for team, name in enumerate(arm_names):
            wins, losses = (a_wins, b_wins) if team == 0 else (b_wins, a_wins)
            arms["AB"[team]] = {"name": name, "wins": wins, "losses": losses, "ties": ties,
                                "clicks": self.credited[team]}
        return {"arms": arms, "open_result_sets": len(self._open), "max_open": self.max_open,
                "evicted": self.evicted, "repeat_clicks": self.repeats}
