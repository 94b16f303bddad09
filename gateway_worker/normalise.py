"""The worker's normalisation step: the queued body as the canonical event it stands for.

A canonical body (adapters ``standard`` and ``hex``) is decoded as it is. A
carrier's body is normalised again here, by the source's adapter built from
this process's configuration (docs/contract.md §3.4): the API only proved it
a tracking update, so a vocabulary extended since then (``"statuses"``) applies
when the dead letter is replayed. A status still outside the vocabulary is the
permanent error ``unmapped_status``.

The carrier's update becomes a :class:`~shared.contracts.CourierEvent` whose
shipment is the tracking number (``{source}:{tracking number}``), whose
``data`` is the carrier's body byte-exact, and whose ``order_id`` is empty when
the carrier sends none (such an event skips the ``order_mismatch`` check).
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from gateway_worker.errors import ErrorCode, PermanentError
from gateway_worker.metrics import WorkerMetrics
from shared.adapters.base import Adapter, Canonical, Ignored, PayloadError, TrackingUpdate
from shared.adapters.registry import build_adapter
from shared.contracts import CANONICAL_ADAPTERS, CourierEvent, EventType, QueuedEvent, Shipment
from shared.settings import Settings

__all__ = ["Normaliser", "carrier_event"]


class Normaliser:
    """Each configured source's adapter, built once per worker process."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics) -> None:
        self._metrics = metrics
        self._adapters: Mapping[str, Adapter] = {
            source: build_adapter(config, tolerance_s=settings.signature_tolerance_s)
            for source, config in settings.sources.items()
        }

    def event_of(self, queued: QueuedEvent) -> CourierEvent:
        """The canonical event ``queued`` carries; raises ``PermanentError`` or msgspec's errors."""
        if queued.adapter in CANONICAL_ADAPTERS:
            return queued.decode()
        adapter = self._adapters.get(queued.source)
        if adapter is None or adapter.kind != queued.adapter:
            raise PermanentError(
                ErrorCode.UNDECODABLE_PAYLOAD,
                f"source {queued.source!r} is no longer configured with adapter "
                f"{queued.adapter!r}: restore it, then replay",
            )
        try:
            normalised = adapter.normalise(queued.body)
        except PayloadError as exc:
            raise PermanentError(ErrorCode.UNDECODABLE_PAYLOAD, exc.detail) from exc
        match normalised:
            case Canonical(event=event):
                return event
            case Ignored(reason=reason):
                raise PermanentError(ErrorCode.UNDECODABLE_PAYLOAD, reason)
            case TrackingUpdate(event_type=None):
                self._metrics.unmapped_statuses.labels(queued.source, queued.adapter).inc()
                raise PermanentError(
                    ErrorCode.UNMAPPED_STATUS,
                    f"carrier status {normalised.carrier_status!r} is not in the vocabulary of "
                    f'source {queued.source!r} ({queued.adapter}): map it in "statuses", '
                    "restart the workers, then replay",
                )
            case TrackingUpdate(event_type=event_type):
                assert event_type is not None
                return carrier_event(queued.body, normalised, event_type)


def carrier_event(body: bytes, update: TrackingUpdate, event_type: EventType) -> CourierEvent:
    """The canonical event of a carrier's tracking update whose status maps to ``event_type``."""
    return CourierEvent(
        event_id=update.event_id,
        event_type=event_type,
        occurred_at=update.occurred_at,
        shipment=Shipment(
            id=update.tracking_number,
            order_id=update.order_id or "",
            tracking_number=update.tracking_number,
        ),
        data=msgspec.Raw(body),
    )
