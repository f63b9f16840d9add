"""Prompt lookup drafts (engine/worker/ngram.py): the longest matching n-gram, its latest earlier
occurrence, what followed it."""

from __future__ import annotations

from gateway.engine.worker.ngram import NgramIndex


def index(tokens: list[int], min_n: int = 1, max_n: int = 3) -> NgramIndex:
    built = NgramIndex(min_n, max_n)
    built.extend(tokens)
    return built


def test_the_draft_is_what_followed_the_last_tokens_earlier() -> None:
    assert index([1, 2, 3, 4, 5, 9, 2, 3]).draft(3) == [4, 5, 9]


def test_the_longest_matching_n_gram_wins_over_a_later_shorter_one() -> None:
    # (7, 3) occurred followed by 4; a lone 3 occurred later followed by 8.
    assert index([7, 3, 4, 4, 3, 8, 7, 3]).draft(2) == [4, 4]
    assert index([7, 3, 4, 4, 3, 8, 7, 3], max_n=1).draft(2) == [8, 7]


def test_of_equal_n_grams_the_latest_occurrence_is_used() -> None:
    assert index([1, 2, 5, 1, 2, 6, 1, 2]).draft(1) == [6]


def test_the_draft_stops_at_the_end_of_the_sequence_and_at_the_limit() -> None:
    assert index([1, 2, 3, 1, 2]).draft(10) == [3, 1, 2]
    assert index([1, 2, 3, 4, 1, 2]).draft(1) == [3]
    assert index([1, 2, 3, 1, 2]).draft(0) == []


def test_no_draft_without_a_match_of_at_least_min_tokens() -> None:
    assert index([1, 2, 3, 4]).draft(4) == []
    assert index([1, 2, 3, 9, 3], min_n=2).draft(4) == []
    assert index([1, 2, 3, 9, 3], min_n=1).draft(4) == [9, 3]


def test_extending_one_token_at_a_time_is_the_same_as_at_once() -> None:
    tokens = [5, 6, 7, 5, 6, 8, 5, 6, 7, 9, 5, 6]
    stepwise = NgramIndex(1, 4)
    for token in tokens:
        stepwise.extend([token])
    assert stepwise.draft(4) == index(tokens, 1, 4).draft(4) == [7, 9, 5, 6]
