"""pytest plugins with the shared fixtures, registered in ``tests/conftest.py``."""
