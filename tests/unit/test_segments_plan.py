"""How a segmented download hands out pieces: in file order, no overlap, no gap."""

from __future__ import annotations

import json

from vlmdata.fetch.segments import CHUNK, MAX_PIECE, _Plan

MiB = 1 << 20
SIZE = 512 * MiB


def take_all(plan: _Plan, connections: int = 8, min_piece: int = 4 * MiB) -> list:
    """Claim pieces until the untaken bytes are gone (nothing written yet)."""
    pieces = []
    while plan.untaken < plan.size:
        pieces.append(plan.claim(connections, min_piece))
    return pieces


def test_pieces_cover_the_file_in_order_and_the_first_ones_grow():
    pieces = take_all(_Plan(SIZE, '"v"', [], 0))
    assert pieces[0].start == 0 and pieces[-1].end == SIZE
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))  # no gap, no overlap
    first = [p.end - p.start for p in pieces[:8]]
    assert first == sorted(first) and first[0] < first[-1]  # staggered: they end one after the other
    assert all(p.end - p.start >= 4 * MiB for p in pieces)
    assert len(pieces) <= 5 * 8  # a few requests per connection, not one per chunk


def test_the_prefix_is_what_is_written_without_a_hole():
    plan = _Plan(SIZE, '"v"', [], 0)
    a, b = plan.claim(8, 4 * MiB), plan.claim(8, 4 * MiB)
    plan.advance(b, 1000)
    assert plan.prefix() == 0 and plan.written() == 1000
    plan.advance(a, a.end - a.start)  # the first piece done: the prefix reaches into the second
    assert plan.prefix() == b.start + 1000


def test_an_idle_connection_takes_the_second_half_of_the_largest_piece():
    plan = _Plan(SIZE, '"v"', [], 0)
    pieces = take_all(plan)
    last = max(pieces, key=lambda p: p.left)
    plan.advance(last, 3 * CHUNK)
    for piece in pieces:
        if piece is not last:
            plan.advance(piece, piece.left)
    end, left = last.end, last.left
    stolen = plan.claim(8, 4 * MiB)
    assert stolen.end == end and last.end == stolen.start  # split in two, nothing lost or doubled
    assert stolen.start >= last.position + CHUNK and stolen.end - stolen.start == left // 2


def test_a_saved_plan_is_loaded_only_for_the_file_it_describes(tmp_path):
    plan = _Plan(SIZE, '"v"', [], 0)
    piece = plan.claim(8, 4 * MiB)
    plan.advance(piece, 5 * CHUNK)
    state = tmp_path / "f.part.segments.json"
    state.write_text(plan.encode("http://example.invalid/f?sig=secret"))
    assert "secret" not in state.read_text()  # signed links keep their credentials off the disk
    again = _Plan.load(state, SIZE)
    assert [(p.start, p.end, p.done) for p in again.pieces] == [(piece.start, piece.end, 5 * CHUNK)] and again.untaken == plan.untaken
    assert _Plan.load(state, SIZE - 1) is None  # the .part is not that file
    state.write_text(json.dumps({**json.loads(state.read_text()), "validator": None}))
    assert _Plan.load(state, SIZE) is None  # no validator: a resume could splice two versions


def test_a_huge_file_still_gets_pieces_of_bounded_size():
    """20 GiB (an SA-1B tar): what is written beyond the hashed prefix stays about a GiB."""
    pieces = take_all(_Plan(20 << 30, '"v"', [], 0))
    assert max(p.end - p.start for p in pieces) == MAX_PIECE
    assert pieces[-1].end == 20 << 30 and all(a.end == b.start for a, b in zip(pieces, pieces[1:]))
