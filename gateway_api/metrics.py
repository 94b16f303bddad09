"""Prometheus metrics of one API app (docs/contract.md §3.2), served at ``GET /metrics``.

Each app owns its :class:`~prometheus_client.CollectorRegistry`, so tests can
build several apps side by side. Label values are bounded: ``route`` is the
route template (``/v1/events/{source}``, or ``_unmatched`` for 404/405 on
unknown paths), ``method`` is one of the standard methods or ``OTHER``, and
``source`` is a configured source id or ``_unknown``.

Labelled children are looked up once and cached: ``labels()`` takes a lock and
builds a tuple per call, which the ingest path should not pay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from litestar import Request, Response, get
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder

from shared.metrics import Families

__all__ = ["UNKNOWN_SOURCE_LABEL", "ApiMetrics", "metrics_endpoint"]

UNKNOWN_SOURCE_LABEL: Final = "_unknown"
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_HTTP_BUCKETS_S: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
_ENQUEUE_BUCKETS_S: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip

_HELP: Final = {
    "gateway_http_requests": "HTTP requests answered, by route template, method and status.",
    "gateway_http_request_duration_seconds": (
        "Time from receiving a request to finishing its answer."
    ),
    "gateway_signature_failures": "Ingest requests refused by source or signature checks.",
    "gateway_events_accepted": "Events newly queued (202).",
    "gateway_events_duplicate": (
        "Events whose idempotency key was already known (200 duplicate at the API)."
    ),
    "gateway_events_rejected": (
        "Ingest requests answered with a problem, by source and problem code."
    ),
    "gateway_source_adapter_info": (
        "1 for each configured source, labelled with its adapter (join on source)."
    ),
    "gateway_events_ignored": (
        "Verified carrier notifications that are not tracking updates (200 ignored)."
    ),
    "gateway_enqueue_duration_seconds": (
        "Time to get Redis's answer to one enqueue (including one retry)."
    ),
}
"""Each metric family's help text (``# HELP``), by name."""


class ApiMetrics:
    """The API's metric families, registered on a registry of their own."""

    def __init__(self, sources: Mapping[str, str]) -> None:
        """``sources``: each configured source id and the name of its adapter."""
        self.registry = CollectorRegistry()
        families = Families(self.registry, _HELP)
        self.http_requests = families.counter("gateway_http_requests", "route", "method", "status")
        self.http_request_duration = families.histogram(
            "gateway_http_request_duration_seconds", "route", "method", buckets=_HTTP_BUCKETS_S
        )
        self.signature_failures = families.counter("gateway_signature_failures", "source", "code")
        self.events_accepted = families.counter("gateway_events_accepted", "source")
        self.events_duplicate = families.counter("gateway_events_duplicate", "source", "stage")
        self.events_rejected = families.counter("gateway_events_rejected", "source", "code")
        self.source_adapter = families.gauge("gateway_source_adapter_info", "source", "adapter")
        self.events_ignored = families.counter("gateway_events_ignored", "source", "adapter")
        self.enqueue_duration = families.histogram(
            "gateway_enqueue_duration_seconds", buckets=_ENQUEUE_BUCKETS_S
        )
        self._accepted = {s: self.events_accepted.labels(s) for s in sources}
        self._duplicate = {s: self.events_duplicate.labels(s, "api") for s in sources}
        self._ignored = {s: self.events_ignored.labels(s, a) for s, a in sources.items()}
        for source, adapter in sources.items():
            self.source_adapter.labels(source, adapter).set(1)
        self._http: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        key = (route, method, status)
        children = self._http.get(key)
        if children is None:
            label_method = method if method in _METHODS else "OTHER"
            children = (
                self.http_requests.labels(route, label_method, str(status)),
                self.http_request_duration.labels(route, label_method),
            )
            if method in _METHODS:
                self._http[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def accepted(self, source: str) -> None:
        """Count an event of a configured source newly queued."""
        self._accepted[source].inc()

    def duplicate(self, source: str) -> None:
        """Count an event of a configured source found already queued or finished."""
        self._duplicate[source].inc()

    def ignored(self, source: str) -> None:
        """Count a verified notification of a configured source that is not a tracking update."""
        self._ignored[source].inc()

    def signature_failure(self, source: str, code: str) -> None:
        """Count a request refused by the source or signature check."""
        self.signature_failures.labels(source, code).inc()

    def rejected(self, source: str, code: str) -> None:
        """Count an ingest request answered with a problem."""
        self.events_rejected.labels(source, code).inc()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """Every metric in the format ``accept`` asks for (Prometheus text by default).

        Returns the body and its content type.
        """
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


@get("/metrics", media_type=CONTENT_TYPE_PLAIN_0_0_4, sync_to_thread=False, tags=["operations"])
def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus metrics of this API process (text exposition; OpenMetrics on request)."""
    metrics: ApiMetrics = request.app.state.resources.metrics
    body, content_type = metrics.render(request.headers.get("accept"))
    # Set the header itself: Litestar would append a second charset to a text/* media type.
    return Response(body, headers={"content-type": content_type})
