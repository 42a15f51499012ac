"""The operations console for radiology IT: pages, actions, ``/metrics``, ``/healthz``, ``/readyz``.

Runs in its own process (``runtime/console.py``), started by ``dicomnode serve``, so that it can
never slow reception. Pages read the database through read-only sessions; the actions (resend,
reprocess, pause and resume delivery) write through the existing queue and outbox functions and
record themselves in the audit log.
"""
