"""Prometheus metric families of one process, each documented from one table of help texts.

The API (:mod:`gateway_api.metrics`) and each worker (:mod:`gateway_worker.metrics`)
declare their families through :class:`Families`: a family is its name and
label names; its help text is the name's entry in the process's table.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Families"]


class Families:
    """Creates metric families on ``registry``; ``documentation`` maps each name to its help."""

    def __init__(self, registry: CollectorRegistry, documentation: Mapping[str, str]) -> None:
        self.registry = registry
        self._documentation = documentation

    def counter(self, name: str, *labels: str) -> Counter:
        """A counter (exposed as ``<name>_total``) with ``labels``."""
        return Counter(name, self._documentation[name], labels, registry=self.registry)

    def gauge(self, name: str, *labels: str) -> Gauge:
        """A gauge with ``labels``."""
        return Gauge(name, self._documentation[name], labels, registry=self.registry)

    def histogram(self, name: str, *labels: str, buckets: tuple[float, ...]) -> Histogram:
        """A histogram with ``labels`` and ``buckets`` (seconds)."""
        return Histogram(
            name, self._documentation[name], labels, buckets=buckets, registry=self.registry
        )
