"""The load test (``gateway loadtest``).

* :mod:`scripts.proof.loadtest.run` — the command: stack, load, drain, judge.
* :mod:`scripts.proof.loadtest.records` — the configuration the locustfile
  reads from ``LOADTEST_*`` variables and the per-request record each Locust
  process writes. Pure Python, no Locust. What the simulated couriers send
  comes from the shared generator, :mod:`scripts.traffic.events`.
* :mod:`scripts.proof.loadtest.locustfile` — the Locust users (the only module
  that imports Locust, and so gevent's monkey-patching; it runs only in the
  Locust child process).
* :mod:`scripts.proof.loadtest.report` — pure functions turning what a run
  collected into the SC-001..SC-004 verdicts and ``report.md``.
"""
