"""SequenceTracker: gaps, missed frames, out-of-order messages, per stream."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from speckleflow.streaming import SequenceTracker

pytestmark = pytest.mark.timeout(60)


def test_contiguous_batches_have_no_gaps() -> None:
    tracker = SequenceTracker()
    assert [tracker.update("r", "ccd", seq, n) for seq, n in [(0, 1), (1, 64), (65, 2)]] == [
        0,
        0,
        0,
    ]
    assert (tracker.received, tracker.messages, tracker.gaps, tracker.missed) == (67, 3, 0, 0)
    assert tracker.expected("r", "ccd") == 67


def test_gap_reports_missed_frames() -> None:
    tracker = SequenceTracker()
    tracker.update("r", "ccd", 0, 10)
    assert tracker.update("r", "ccd", 25, 5) == 15
    assert tracker.update("r", "ccd", 30, 1) == 0
    assert tracker.update("r", "ccd", 40, 1) == 9
    assert (tracker.gaps, tracker.missed, tracker.received) == (2, 24, 17)


def test_streams_and_runs_are_independent() -> None:
    tracker = SequenceTracker()
    tracker.update("r1", "ccd", 0, 4)
    tracker.update("r2", "ccd", 0, 4)
    tracker.update("r1", "documents", 0)
    assert tracker.update("r1", "ccd", 4, 4) == 0
    assert tracker.update("r2", "ccd", 6, 1) == 2
    summary = tracker.summary()
    by_key = {(s["run_uid"], s["stream"]): s for s in summary["streams"]}
    assert by_key[("r2", "ccd")] == {
        "run_uid": "r2",
        "stream": "ccd",
        "next_seq": 7,
        "received": 5,
        "missed": 2,
        "gaps": 1,
    }
    assert summary["missed"] == 2
    msgpack.packb(summary)  # plain values: can go into a status report


def test_late_join_counts_earlier_frames_as_missed() -> None:
    tracker = SequenceTracker()
    assert tracker.update("r", "ccd", 100, 1) == 100


def test_duplicates_and_restarts_are_out_of_order_not_gaps() -> None:
    tracker = SequenceTracker()
    tracker.update("r", "ccd", 0, 10)
    assert tracker.update("r", "ccd", 5, 2) == 0
    assert tracker.update("r", "ccd", 8, 4) == 0  # overlaps the end: expectation moves on
    assert tracker.expected("r", "ccd") == 12
    assert (tracker.out_of_order, tracker.gaps, tracker.missed) == (2, 0, 0)
    tracker.forget("r")
    assert tracker.expected("r", "ccd") == 0
    assert tracker.received == 16  # totals are kept


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 8)), max_size=60))
def test_received_plus_missed_is_everything_sent(batches: list[tuple[bool, int]]) -> None:
    """Whatever subset of an in-order stream arrives, nothing is unaccounted for."""
    tracker = SequenceTracker()
    seq = last_delivered_end = 0
    for delivered, n in batches:
        if delivered:
            tracker.update("r", "s", seq, n)
            last_delivered_end = seq + n
        seq += n
    assert tracker.received + tracker.missed == last_delivered_end
    assert tracker.out_of_order == 0


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 8)), max_size=60))
def test_closing_with_the_published_count_accounts_for_the_tail(batches: list[tuple[bool, int]]) -> None:
    """With the publisher's total at the end, frames lost after the last delivered one count too."""
    tracker = SequenceTracker()
    seq = 0
    for delivered, n in batches:
        if delivered:
            tracker.update("r", "s", seq, n)
        seq += n
    assert tracker.close("r", "s", seq) >= 0
    assert tracker.received + tracker.missed == seq
    assert tracker.close("r", "s", seq) == 0  # closing twice adds nothing


def test_close_rejects_a_negative_total() -> None:
    with pytest.raises(ValueError, match="-1"):
        SequenceTracker().close("r", "s", -1)


def test_stop_message_carries_frames_published_and_bad_counts_are_rejected() -> None:
    from speckleflow.streaming import FrameDecodeError, decode
    from speckleflow.streaming.protocol import _document_parts, pack_document

    body = pack_document({"uid": "s", "run_start": "r", "exit_status": "success"})
    msg = decode(_document_parts("stop", body, "r", 3, frames_published={"ccd": 120}))
    assert msg.frames_published == {"ccd": 120}
    assert decode(_document_parts("stop", body, "r", 3)).frames_published is None
    parts = _document_parts("stop", body, "r", 3)
    header = msgpack.unpackb(parts[1])
    for bad in ({"ccd": -1}, {"ccd": 1.5}, [1, 2], {"ccd": "7"}):
        parts[1] = msgpack.packb({**header, "frames_published": bad})
        with pytest.raises(FrameDecodeError, match="frames_published"):
            decode(parts)
