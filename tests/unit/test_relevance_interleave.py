"""Team-draft interleaving, result-set ids and click credit, without sockets."""
import base64
import random

import pytest

from selproxy.evaluation.metrics import rbo, sign_test
from selproxy.search.interleave import (ClickBook, CoinSource, ResultSetToken, TokenError, id_digest,
                                        ranked_order, team_draft)

SECRET = b"s" * 32


def check_team_draft(a, b, draft):
    """The invariants of Radlinski et al.'s Algorithm 2, step by step."""
    taken = []
    sizes = [0, 0]
    for item, team in zip(draft.order, draft.teams):
        # The team that picks is the smaller one (either when level)...
        assert sizes[team] <= sizes[1 - team]
        # ...and it takes its own highest item not yet taken.
        ranking = (a, b)[team]
        assert item == next(x for x in ranking if x not in taken)
        taken.append(item)
        sizes[team] += 1
        # Every prefix is balanced within one.
        assert abs(sizes[0] - sizes[1]) <= 1
    # Every item once, from exactly one team.
    assert len(set(draft.order)) == len(draft.order) == len(draft.teams)
    # It stops exactly when either ranking has nothing left to give.
    assert set(a) <= set(taken) or set(b) <= set(taken)


@pytest.mark.parametrize("seed", range(300))
def test_team_draft_of_two_orders_of_one_window(seed):
    rng = random.Random(seed)
    n = rng.randrange(1, 60)
    a = list(range(n))
    b = list(range(n))
    rng.shuffle(a)
    rng.shuffle(b)
    draft = team_draft(a, b, CoinSource.coins(seed))
    check_team_draft(a, b, draft)
    assert sorted(draft.order) == list(range(n))


@pytest.mark.parametrize("seed", range(300))
def test_team_draft_with_duplicates_and_different_sets(seed):
    rng = random.Random(seed)
    a = [rng.randrange(12) for _ in range(rng.randrange(0, 15))]
    b = [rng.randrange(12) for _ in range(rng.randrange(0, 15))]
    draft = team_draft(a, b, CoinSource.coins(seed))
    check_team_draft(a, b, draft)


def test_the_papers_small_cases_and_both_coin_outcomes():
    seen = set()
    for seed in range(64):
        draft = team_draft([1, 2], [2, 3], CoinSource.coins(seed))
        seen.add((draft.order, draft.teams))
    # A first: A takes 1, then B (behind) takes 2; B first: B takes 2, then A takes 1.
    assert seen == {((1, 2), (0, 1)), ((2, 1), (1, 0))}
    assert team_draft([], [1], lambda: 1).order == ()
    same = team_draft([3, 1, 2], [3, 1, 2], lambda: 1)
    assert same.order == (3, 1, 2) and same.teams == (0, 1, 0)


def test_the_same_seed_gives_the_same_interleaving():
    a, b = list(range(30)), list(reversed(range(30)))
    first = [team_draft(a, b, CoinSource.coins(s)) for s in (CoinSource(7).next_seed() for _ in range(1))]
    again = [team_draft(a, b, CoinSource.coins(s)) for s in (CoinSource(7).next_seed() for _ in range(1))]
    assert first == again


def test_ranked_order_sorts_like_the_proxys_pages():
    assert ranked_order([1.0, 3.0, 3.0, 2.0], 4) == [1, 2, 3, 0]
    assert ranked_order([1.0, 2.0], 4) == [1, 0, 2, 3]  # partial: the rest in engine order
    assert ranked_order(None, 3) == [0, 1, 2]


def token(teams=(0, 1, 1, 0), ids=("a", "b", "c", "d"), offset=0, issued=1_000_000):
    return ResultSetToken(12345, issued, offset, tuple(teams), tuple(id_digest(i) for i in ids))


def test_result_set_ids_round_trip_and_stay_short():
    text = token().encode(SECRET)
    decoded = ResultSetToken.decode(text, SECRET)
    assert decoded == token()
    assert decoded.position_of("c") == 2 and decoded.position_of("zz") is None
    ten = ResultSetToken(1, 2, 0, (1,) * 10, tuple(id_digest(str(i)) for i in range(10))).encode(SECRET)
    full = ResultSetToken(1, 2, 0, (1,) * 64, tuple(id_digest(str(i)) for i in range(64))).encode(SECRET)
    assert len(ten) == 100 and len(full) == 396
    assert set(full) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.mark.parametrize("mangle,reason", [
    (lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"), "forged"),
    (lambda t: t[:10], "malformed"),
    (lambda t: "!" * 40, "malformed"),
    (lambda t: "", "malformed"),
    (lambda t: "é" + t, "malformed"),
    (lambda t: t * 8, "malformed"),
])
def test_a_tampered_result_set_id_is_refused(mangle, reason):
    with pytest.raises(TokenError) as caught:
        ResultSetToken.decode(mangle(token().encode(SECRET)), SECRET)
    assert caught.value.reason == reason


def test_a_result_set_id_from_another_secret_is_forged():
    with pytest.raises(TokenError, match="forged"):
        ResultSetToken.decode(token().encode(b"x" * 32), SECRET)


def test_flipping_a_team_bit_breaks_the_signature():
    raw = bytearray(base64.urlsafe_b64decode(token().encode(SECRET) + "=="))
    raw[17] ^= 1  # the first byte of the team bits
    with pytest.raises(TokenError, match="forged"):
        ResultSetToken.decode(base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("="), SECRET)


def test_click_credit_wins_losses_ties_and_repeats():
    book = ClickBook(max_open=10, ttl=100, clock=lambda: 1_000_010)
    t = token()
    assert book.credit(t, 0) == 0          # A ahead
    assert book.outcomes == [1, 0, 0]
    assert book.credit(t, 1) == 1          # level: a tie
    assert book.outcomes == [0, 0, 1]
    assert book.credit(t, 1) is None and book.repeats == 1
    assert book.credit(t, 2) == 1          # B ahead
    assert book.outcomes == [0, 1, 0]
    snap = book.snapshot(["bm25", "engine"])
    assert snap["arms"]["A"] == {"name": "bm25", "wins": 0, "losses": 1, "ties": 0, "clicks": 1}
    assert snap["arms"]["B"] == {"name": "engine", "wins": 1, "losses": 0, "ties": 0, "clicks": 2}


def test_the_open_result_sets_are_bounded_in_number_and_age():
    now = [1_000_000.0]
    book = ClickBook(max_open=2, ttl=60, clock=lambda: now[0])
    for nonce in range(3):
        book.credit(ResultSetToken(nonce, 1_000_000, 0, (0,), (id_digest("a"),)), 0)
    assert len(book) == 2 and book.evicted == 1
    assert book.outcomes == [3, 0, 0]  # an evicted set keeps its outcome
    now[0] += 61
    book.credit(ResultSetToken(9, int(now[0]), 0, (1,), (id_digest("a"),)), 0)
    assert len(book) == 1


def test_sign_test_is_the_exact_two_sided_binomial():
    assert sign_test(9, 1) == pytest.approx(2 * 11 / 1024, rel=1e-12)
    assert sign_test(1, 9) == sign_test(9, 1)
    assert sign_test(5, 5) == 1.0 and sign_test(0, 0) == 1.0
    assert sign_test(0, 20) == pytest.approx(2 / 2 ** 20, rel=1e-12)
    assert sign_test(60, 40) == pytest.approx(0.056887933640401, rel=1e-9)  # scipy.stats.binomtest


def test_rbo_is_one_for_the_same_order_and_matches_its_definition():
    assert rbo(list("abcdef"), list("abcdef")) == pytest.approx(1.0)
    assert rbo(list("abc"), list("xyz")) == 0.0
    # Depth 2 of swapped pairs: A1 = 0, A2 = 1: 0.1/0.9 * (0 + 0.81) + 0.81.
    assert rbo(["a", "b"], ["b", "a"]) == pytest.approx(0.1 / 0.9 * 0.81 + 0.81)
