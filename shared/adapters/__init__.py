"""Carrier adapters: each courier's own signature, payload and status vocabulary.

* :mod:`shared.adapters.config` — a source's configuration (``parse_source_config``);
  imports nothing that imports ``shared.settings``.
* :mod:`shared.adapters.registry` — ``build_adapter(config, tolerance_s=…)``.
* :mod:`shared.adapters.base` — results (``Canonical``, ``TrackingUpdate``,
  ``Ignored``) and ``PayloadError``.
* one module per adapter: ``standard``, ``hex``, ``easypost``, ``aftership``,
  ``shopify``, ``ups``, ``shippo``, ``generic``.

Nothing is imported here, so importing :mod:`shared.adapters.config` stays cheap
and free of import cycles.
"""
