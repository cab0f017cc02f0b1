"""Pure: what one renewal round of an agent's leases means (stream.ownership does the I/O).

Every TTL/3 the agent renews every lease it holds in one round trip; a stream kept since the
last round is renewed with the others, so no lease goes longer than TTL/3 unchecked, as when
each stream renewed its own. While the reply is on its way, a stream may let its lease go (it
finished: its finish deleted the lease, so the round reports it lost) or keep it anew (the store
had forgotten the stream and it was written back and leased again). A loss in the reply is
reported only for the very registration the round was sent for, and only once.
"""

from __future__ import annotations

from collections.abc import Mapping


def lost_leases(
    sent: Mapping[str, int], reply: Mapping[str, bool], kept: Mapping[str, int]
) -> list[str]:
    """The streams whose `on_lost` this round calls: sent, answered "not ours", and still
    kept under the same registration (stream id -> registration number) as when sent. A stream
    the reply does not mention is asked again next round."""
    return sorted(
        stream_id
        for stream_id, registration in sent.items()
        if reply.get(stream_id) is False and kept.get(stream_id) == registration
    )
