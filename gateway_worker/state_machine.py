"""The shipment state machine (SPEC §3.3, §4.1) as a pure function.

:func:`decide` is the specification; ``Shipments.apply_event`` implements the
same rules as a server-side update pipeline and a parity test holds the two
together. Rules, first match wins:

1. no stored shipment → ``applied`` (the event creates it);
2. the event is already in the shipment's history → ``already_applied``;
3. ``shipment.order_id`` differs from the stored one → ``order_mismatch``;
4. stored status terminal, event not older than ``last_event_at``, and a
   different status → ``invalid_transition``;
5. event older than ``last_event_at`` → ``recorded_stale`` (history only);
6. otherwise → ``applied`` (history, and the event's status becomes current).

"Not older" means ``occurred_at >= last_event_at``: of two events with the same
time, the one applied later wins. Times compare at millisecond precision, as
BSON stores them.
"""

from __future__ import annotations

import enum
from datetime import datetime

from msgspec import Struct

from shared.contracts import TERMINAL_STATUSES, CourierEvent
from shared.storage.shipments import ShipmentState

__all__ = ["Decision", "Outcome", "decide", "to_stored_precision"]


class Outcome(enum.StrEnum):
    """What applying one event to one shipment did."""

    APPLIED = "applied"
    ALREADY_APPLIED = "already_applied"
    RECORDED_STALE = "recorded_stale"
    INVALID_TRANSITION = "invalid_transition"
    ORDER_MISMATCH = "order_mismatch"


class Decision(Struct, frozen=True):
    """The outcome and the shipment's status after it."""

    outcome: Outcome
    status: str

    @property
    def changes_history(self) -> bool:
        """Whether the event was appended to the shipment's history."""
        return self.outcome in (Outcome.APPLIED, Outcome.RECORDED_STALE)

    @property
    def rejected(self) -> bool:
        """Whether the event is a permanent error for this shipment."""
        return self.outcome in (Outcome.INVALID_TRANSITION, Outcome.ORDER_MISMATCH)


def to_stored_precision(moment: datetime) -> datetime:
    """``moment`` truncated to milliseconds, as BSON dates hold it."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def decide(current: ShipmentState | None, event: CourierEvent) -> Decision:
    """Decide what ``event`` does to a shipment whose stored state is ``current``."""
    status = event.event_type.status
    if current is None:
        return Decision(Outcome.APPLIED, status)
    if event.event_id in current.event_ids:
        return Decision(Outcome.ALREADY_APPLIED, current.status)
    if event.shipment.order_id != current.order_id:
        return Decision(Outcome.ORDER_MISMATCH, current.status)
    not_older = to_stored_precision(event.occurred_at) >= current.last_event_at
    if current.status in TERMINAL_STATUSES and not_older and status != current.status:
        return Decision(Outcome.INVALID_TRANSITION, current.status)
    if not not_older:
        return Decision(Outcome.RECORDED_STALE, current.status)
    return Decision(Outcome.APPLIED, status)
