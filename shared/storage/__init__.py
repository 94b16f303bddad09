"""MongoDB access: the only package that imports PyMongo.

PyMongo exceptions are caught here and re-raised as :mod:`shared.storage.errors`
types (``raise ... from exc``); callers reason about ours, never about PyMongo's.
"""
