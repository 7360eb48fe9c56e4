"""A ranker that leaves a mark of the process that built it.

``PidRanker(directory=...)`` writes a file named after its pid into
``directory`` when constructed, so a test can tell in which processes a ranker
named on the command line was built.  It ranks shorter documents first.
"""
import os
from typing import List, Sequence


class PidRanker:
    def __init__(self, directory: str) -> None:
        with open(os.path.join(directory, str(os.getpid())), "w") as mark:
            mark.write("built\n")

    def rank(self, query: str, docs: Sequence[str]) -> List[float]:
        return [-float(len(doc)) for doc in docs]
