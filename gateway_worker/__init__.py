"""The worker process: arq jobs that turn queued courier events into one effect each.

``worker`` builds the arq settings, ``jobs`` runs one job (claim, apply,
deliver, mark), ``classify`` and ``backoff`` decide retries, ``state_machine``
is the shipment rules, ``downstream`` delivers, ``main`` holds the commands.
See ``docs/queues.md``.
"""
