"""MongoDB access: the only package that imports PyMongo.

PyMongo and BSON exceptions are caught here and re-raised as :mod:`shared.storage.errors`
types (``raise ... from exc``); callers reason about ours, never about PyMongo's.
"""
