"""``selproxy eval interleaving``: which arm of ``--interleave A,B`` users prefer.

The input is either the capture's click lines (``--capture`` files: exact
across workers, since each line names its result set and the arm it
credited) or the proxy's status page (one worker's tallies: with
``--workers N`` give each worker's page, or use the capture).  Per result
set the arm with more clicked hits wins; equal counts are a tie.  The
preference is tested with a two-sided exact binomial sign test on the wins,
ties left out.
"""
from __future__ import annotations

import json
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set

from .metrics import sign_test

__all__ = ("Preference", "from_clicks", "from_status", "preference")


@dataclass
class Preference:
    arms: List[str]
    a_wins: int
    b_wins: int
    ties: int
    p_value: float
    #: (A wins + ties / 2) / result sets - 0.5: above 0 favours A (Chapelle et al. 2012's delta).
    delta: float
    source: str

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        a, b = self.arms
        total = self.a_wins + self.b_wins + self.ties
        if self.a_wins == self.b_wins:
            verdict = "no preference"
        else:
            verdict = f"{a if self.a_wins > self.b_wins else b} preferred"
        return (f"A={a} B={b}: {total} result sets with clicks ({self.source}); "
                f"A wins {self.a_wins}, B wins {self.b_wins}, ties {self.ties}; "
                f"delta {self.delta:+.4f}; {verdict}, sign test (two-sided, ties excluded) "
                f"p = {self.p_value:.4g}")


def preference(arms: Sequence[str], a_wins: int, b_wins: int, ties: int, source: str) -> Preference:
    total = a_wins + b_wins + ties
    delta = (a_wins + ties / 2) / total - 0.5 if total else 0.0
    return Preference(list(arms), a_wins, b_wins, ties, sign_test(a_wins, b_wins), delta, source)


def from_clicks(paths: Iterable[str]) -> Preference:
    """Add up the click lines of capture files, per result set."""
    per_set: Dict[str, Dict[str, Set[Any]]] = {}
    names: Dict[str, str] = {}
    for path in paths:
        with open(path, encoding="utf-8") as stream:
            for line in stream:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(record, dict) or record.get("type") != "click":
                    continue
                arm = record.get("arm")
                if arm not in ("A", "B"):
                    continue
                if isinstance(record.get("arm_name"), str):
                    names[arm] = record["arm_name"]
                # A hit clicked twice (or logged by two workers) counts once.
                per_set.setdefault(str(record.get("result_set")), {"A": set(), "B": set()})[arm].add(
                    record.get("position"))
    a = sum(len(s["A"]) > len(s["B"]) for s in per_set.values())
    b = sum(len(s["B"]) > len(s["A"]) for s in per_set.values())
    ties = len(per_set) - a - b
    return preference([names.get("A", "A"), names.get("B", "B")], a, b, ties, "click log")


def from_status(urls: Iterable[str], timeout: float = 10.0) -> Preference:
    """Sum the ``interleaving`` sections of status pages."""
    a = b = ties = 0
    arms: Optional[List[str]] = None
    for url in urls:
        if "/_selproxy/" not in url:
            url = url.rstrip("/") + "/_selproxy/status"
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            doc = json.loads(answer.read())
        try:
            section = doc["search"]["interleaving"]["arms"]
        except (KeyError, TypeError):
            raise ValueError(f"{url}: the status page has no interleaving section "
                             "(is the proxy running with --interleave?)") from None
        arms = [section["A"]["name"], section["B"]["name"]]
        a += section["A"]["wins"]
        b += section["B"]["wins"]
        ties += section["A"]["ties"]
    return preference(arms or ["A", "B"], a, b, ties, "status page")
