"""vlmdata.fetch.zip_members.coalesce: member byte ranges into requests, within the bounds."""

from __future__ import annotations

import pytest

from vlmdata.fetch.zip_members import Coalescing, Span, TooScattered, coalesce


def _spans(*bounds: tuple[int, int]) -> list[Span]:
    return [Span(start, end, member=None) for start, end in bounds]


def _requests(spans, rules) -> list[tuple[int, int]]:
    return [(r.start, r.end) for r in coalesce(spans, rules)]


def test_neighbours_closer_than_max_gap_share_a_request():
    spans = _spans((0, 100), (110, 200), (1000, 1100), (1100, 1200))
    assert _requests(spans, Coalescing(max_gap=10)) == [(0, 200), (1000, 1200)]
    assert _requests(spans, Coalescing(max_gap=0)) == [(0, 100), (110, 200), (1000, 1200)]
    assert [len(r.spans) for r in coalesce(spans, Coalescing(max_gap=10))] == [2, 2]


def test_too_many_requests_merge_the_smallest_gaps_first_within_the_over_read_budget():
    spans = _spans((0, 100), (150, 250), (1000, 1100), (1120, 1220))  # gaps 50, 750, 20
    assert _requests(spans, Coalescing(max_gap=0, max_requests=2, max_over_read=1.0)) == [(0, 250), (1000, 1220)]
    assert _requests(spans, Coalescing(max_gap=0, max_requests=3, max_over_read=1.0)) == [(0, 100), (150, 250), (1000, 1220)]


def test_requests_that_the_over_read_budget_cannot_bound_are_too_scattered():
    spans = _spans((0, 100), (1000, 1100), (2000, 2100))  # gaps of 900 against 300 wanted bytes
    with pytest.raises(TooScattered, match="download the whole archive instead"):
        coalesce(spans, Coalescing(max_gap=0, max_requests=2, max_over_read=1.0))
    assert len(coalesce(spans, Coalescing(max_gap=0, max_requests=2, max_over_read=3.0))) == 2


def test_the_over_read_budget_also_bounds_small_gaps():
    spans = _spans((0, 10), (60, 70), (120, 130))  # 30 wanted bytes, gaps of 50
    assert _requests(spans, Coalescing(max_gap=100, max_over_read=2.0)) == [(0, 70), (120, 130)]


def test_a_request_holds_at_most_max_range_bytes():
    spans = _spans((0, 400), (400, 800), (800, 1200))
    assert _requests(spans, Coalescing(max_range=800)) == [(0, 800), (800, 1200)]
    assert _requests(_spans((0, 5000)), Coalescing(max_range=800)) == [(0, 5000)]  # alone: it streams


def test_nothing_wanted_nothing_requested():
    assert coalesce([], Coalescing()) == []
