"""``selproxy demo``: the stdlib's documentation as a corpus, engine order against reranked order."""
