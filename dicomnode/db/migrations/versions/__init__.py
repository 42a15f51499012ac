"""Schema revisions, oldest first (``0001_baseline.py``); a package so that setuptools ships them."""
