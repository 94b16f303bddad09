"""The worker process: arq jobs that turn queued courier events into one effect each.

``worker`` builds the arq settings, ``jobs`` runs one job (claim, apply,
deliver, mark), ``classify`` and ``backoff`` decide retries, ``downstream``
delivers, ``main`` holds the commands. The shipment rules are the update
pipeline of ``shared.storage.shipments``.
See ``docs/queues.md``.
"""
