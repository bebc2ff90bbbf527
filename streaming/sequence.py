"""Sequence-number bookkeeping: how a receiver knows what it missed."""

from __future__ import annotations

from typing import Any

__all__ = ["SequenceTracker"]

# per-stream state slots: [next expected seq, frames received, frames missed, gap events]
_NEXT, _RECEIVED, _MISSED, _GAPS = range(4)


class SequenceTracker:
    """Expected next sequence number per ``(run_uid, stream)``, and what went missing.

    Publishers number frames per ``(run_uid, stream)`` from 0 (a message of ``n``
    frames starting at ``seq`` covers ``seq .. seq + n - 1``). PUB/SUB drops messages
    silently when a subscriber falls behind its high-water mark; the jump in sequence
    numbers is how that becomes visible.

    Attributes
    ----------
    received : int
        Frames (or documents) received, all streams.
    messages : int
        Messages received, all streams.
    gaps : int
        Gap events: messages that arrived after one or more missing ones.
    missed : int
        Frames (or documents) missing in those gaps. A stream first seen at
        ``seq = k > 0`` counts the ``k`` earlier ones as missed (a late join looks like
        a gap: the receiver does not have them).
    out_of_order : int
        Messages whose ``seq`` is below the expected one: duplicates, late arrivals,
        or a publisher that restarted its count. They do not move the expectation back.
    """

    def __init__(self) -> None:
        self._streams: dict[tuple[str, str], list[int]] = {}
        self.received = 0
        self.messages = 0
        self.gaps = 0
        self.missed = 0
        self.out_of_order = 0

    def update(self, run_uid: str, stream: str, seq: int, n: int = 1) -> int:
        """Account for a message carrying items ``seq .. seq + n - 1``.

        Parameters
        ----------
        run_uid, stream : str
            Identify the sequence.
        seq : int
            Sequence number of the first item in the message (≥ 0).
        n : int, optional
            Number of items (frames) in the message (≥ 1).

        Returns
        -------
        int
            Items missed immediately before this message (0 if none).
        """
        state = self._streams.get((run_uid, stream))
        if state is None:
            state = self._streams[(run_uid, stream)] = [0, 0, 0, 0]
        self.messages += 1
        self.received += n
        state[_RECEIVED] += n
        expected = state[_NEXT]
        if seq == expected:
            state[_NEXT] = seq + n
            return 0
        if seq > expected:
            gap = seq - expected
            state[_NEXT] = seq + n
            state[_MISSED] += gap
            state[_GAPS] += 1
            self.missed += gap
            self.gaps += 1
            return gap
        self.out_of_order += 1
        if seq + n > expected:
            state[_NEXT] = seq + n
        return 0

    def close(self, run_uid: str, stream: str, total: int) -> int:
        """Account for the end of a stream of which ``total`` items were published.

        Items after the last one received leave no jump in the sequence numbers (no
        later message reveals them); the publisher's count does. They are counted as
        missed, in one gap.

        Parameters
        ----------
        run_uid, stream : str
            Identify the sequence.
        total : int
            Items the publisher sent on this stream (≥ 0), e.g. from a stop
            document's ``frames_published``.

        Returns
        -------
        int
            Items missed at the end of the stream (0 if none).

        Raises
        ------
        ValueError
            If `total` is negative.
        """
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        state = self._streams.get((run_uid, stream))
        if state is None:
            state = self._streams[(run_uid, stream)] = [0, 0, 0, 0]
        tail = total - state[_NEXT]
        if tail <= 0:
            return 0
        state[_NEXT] = total
        state[_MISSED] += tail
        state[_GAPS] += 1
        self.missed += tail
        self.gaps += 1
        return tail

    def expected(self, run_uid: str, stream: str) -> int:
        """Next sequence number expected for ``(run_uid, stream)`` (0 if unseen)."""
        state = self._streams.get((run_uid, stream))
        return 0 if state is None else state[_NEXT]

    def forget(self, run_uid: str) -> None:
        """Drop the per-stream state of a finished run (totals are kept)."""
        for key in [key for key in self._streams if key[0] == run_uid]:
            del self._streams[key]

    def summary(self) -> dict[str, Any]:
        """Totals and per-stream state.

        Returns
        -------
        dict
            ``received``, ``messages``, ``gaps``, ``missed``, ``out_of_order`` and
            ``streams``: a list of ``{"run_uid", "stream", "next_seq", "received",
            "missed", "gaps"}`` — plain values, so it can go into a status report.
        """
        return {
            "received": self.received,
            "messages": self.messages,
            "gaps": self.gaps,
            "missed": self.missed,
            "out_of_order": self.out_of_order,
            "streams": [
                {
                    "run_uid": run_uid,
                    "stream": stream,
                    "next_seq": state[_NEXT],
                    "received": state[_RECEIVED],
                    "missed": state[_MISSED],
                    "gaps": state[_GAPS],
                }
                for (run_uid, stream), state in self._streams.items()
            ],
        }
