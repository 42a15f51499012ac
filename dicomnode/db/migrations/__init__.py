"""Alembic environment of the dicomnode schema, run by :mod:`dicomnode.db.migrate` (no alembic.ini).

``versions/`` holds one file per revision, named ``<NNNN>_<slug>.py``; the first (``0001``) is the
schema as it was before dicomnode used migrations.
"""
