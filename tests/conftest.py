"""The shared fixtures are pytest plugins under ``tests/plugins/``; what tests
build (events, signed requests, stored documents) is in ``tests/factories.py``.

* ``tests.plugins.servers``: real Redis and MongoDB, per-test settings and database;
* ``tests.plugins.worker``: the mock downstream, processors, worker processes;
* ``tests.plugins.dlq``: the dead-letter service.

A directory's own ``conftest.py`` holds only fixtures local to it.
"""

pytest_plugins = ["tests.plugins.servers", "tests.plugins.worker", "tests.plugins.dlq"]
