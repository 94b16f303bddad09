"""The load test (``gateway loadtest``) and the worker benchmark's event mix.

* :mod:`scripts.proof.loadtest.traffic` — what simulated couriers send: shipment
  lifecycles with mixed event types, resends and out-of-order pairs; the
  configuration the locustfile reads from ``LOADTEST_*`` variables; the
  per-request record each Locust process writes. Pure Python, no Locust.
* :mod:`scripts.proof.loadtest.locustfile` — the Locust users (the only module
  that imports Locust, and so gevent's monkey-patching; it runs only in the
  Locust child process).
* :mod:`scripts.proof.loadtest.report` — pure functions turning what a run
  collected into the SC-001..SC-004 verdicts and ``report.md``.
"""
