"""STOW-RS (DICOMweb store) to a ``kind = "dicomweb"`` destination, with the DIMSE sender's outcomes.

Inputs: outbox items (uid, path, SOP Class UID) and the destination. Outputs: one
:class:`~dicomnode.send.scu.ItemOutcome` per item. Side effects: HTTP POSTs of
``multipart/related; type="application/dicom"`` bodies (PS3.18 10.5) through ``dicomweb-client``.

The split between transient and permanent failures follows the DIMSE sender: network errors,
timeouts, HTTP 5xx, 408 and 429 are transient (retried with backoff by the outbox); other 4xx
are permanent. When the response carries a store result (PS3.18 10.5.3: Referenced SOP Sequence,
Failed SOP Sequence), it decides per instance: a Failure Reason of out of resources (A7xx) or
processing failure (0110) is transient, others are permanent.

Authentication: ``basic`` (username, password from ``secret_file``) or ``bearer`` (token from
``secret_file``); the file is read at each delivery, so a rotated secret needs no restart. The
secret is never logged, and never sent over plain ``http://`` except to loopback (checked at
start-up by the configuration and again here). TLS verifies the peer against
``tls_ca_certificates`` (or the system CAs).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from dicomnode.config import Destination
from dicomnode.config.settings import is_loopback_host
from dicomnode.send.scu import ItemOutcome, classify_status, read_output

log = logging.getLogger(__name__)
BATCH = 50  # instances per request: bounded bodies, and one bad request fails few objects
_TRANSIENT_HTTP = {408, 429}


def _session(dest: Destination) -> requests.Session:
    """A session with the destination's authentication and TLS verification.

    Raises
    ------
    OSError
        ``secret_file`` cannot be read.
    ValueError
        The secret would go over plain http to another host.
    """
    session = requests.Session()
    session.verify = str(dest.tls_ca_certificates) if dest.tls_ca_certificates else True
    session.trust_env = False  # no proxy or netrc from the environment: only what the file says
    if not dest.auth:
        return session
    url = urlsplit(dest.url)
    if url.scheme != "https" and not is_loopback_host(url.hostname):
        raise ValueError("refusing to send a secret over plain http to a host other than loopback")
    secret = Path(str(dest.secret_file)).read_text(encoding="utf-8").strip()
    if dest.auth == "basic":
        session.auth = (dest.username, secret)
    else:
        session.headers["Authorization"] = f"Bearer {secret}"
    return session


def _store_result(response: requests.Response | None) -> Dataset | None:
    """The store result in a response body (DICOM JSON), or None."""
    if response is None or not response.content:
        return None
    if response.headers.get("Content-Type", "").split(";")[0].strip() not in (
            "application/dicom+json", "application/json"):
        return None
    try:
        return Dataset.from_json(response.json())
    except (ValueError, TypeError, KeyError):
        return None


def _per_instance(result: Dataset, uids: Sequence[str], http_ok: bool) -> dict[str, ItemOutcome]:
    out: dict[str, ItemOutcome] = {}
    for item in result.get("ReferencedSOPSequence", []):
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        warning = item.get("WarningReason")
        out[uid] = ItemOutcome("sent", f"warning 0x{int(warning):04X}" if warning is not None else "")
    for item in result.get("FailedSOPSequence", []):
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        reason = item.get("FailureReason")
        if reason is None:
            out[uid] = ItemOutcome("permanent", "refused (no failure reason)")
            continue
        out[uid] = ItemOutcome(classify_status(int(reason)), f"failure reason 0x{int(reason):04X}",
                               int(reason))
    missing = ItemOutcome("sent") if http_ok and not out else \
        ItemOutcome("transient", "not confirmed in the store result")
    return {u: out.get(u, missing) for u in uids}


def _post(client: DICOMwebClient, batch: list[tuple[str, Dataset]]) -> dict[str, ItemOutcome]:
    uids = [u for u, _ in batch]
    try:
        result = client.store_instances([ds for _, ds in batch])
    except requests.HTTPError as exc:
        rsp = exc.response
        code = rsp.status_code if rsp is not None else 0
        parsed = _store_result(rsp)
        if parsed is not None and ("FailedSOPSequence" in parsed or "ReferencedSOPSequence" in parsed):
            return _per_instance(parsed, uids, http_ok=False)
        result_kind = "transient" if code in _TRANSIENT_HTTP or code >= 500 else "permanent"
        reason = rsp.reason if rsp is not None else ""
        return {u: ItemOutcome(result_kind, f"HTTP {code} {reason}".strip()) for u in uids}
    except requests.RequestException as exc:  # connection refused, DNS, TLS, timeout
        return {u: ItemOutcome("transient", f"{type(exc).__name__}: {exc}") for u in uids}
    return _per_instance(result, uids, http_ok=True)


def stow_items(items: Sequence[tuple[str, Path, str]], dest: Destination, *,
               timeout_s: float = 30.0) -> dict[str, ItemOutcome]:
    """STOW-RS (uid, path, sop_class_uid) items to ``dest.url``; outcome per uid."""
    out: dict[str, ItemOutcome] = {}
    readable: list[tuple[str, Dataset]] = []
    for uid, path, sop_class in items:
        try:
            readable.append((uid, read_output(path, uid, sop_class)))
        except ValueError as exc:
            out[uid] = ItemOutcome("permanent", str(exc))
    if not readable:
        return out
    try:
        session = _session(dest)
    except ValueError as exc:
        return {**out, **{u: ItemOutcome("permanent", str(exc)) for u, _ in readable}}
    except OSError as exc:  # fixing the file fixes the delivery: retry
        detail = f"cannot read secret_file: {type(exc).__name__}"
        return {**out, **{u: ItemOutcome("transient", detail) for u, _ in readable}}
    client = DICOMwebClient(dest.url.rstrip("/"), session=session, timeout=timeout_s)
    # No retries inside the request: the outbox retries, with backoff, and records each attempt.
    client.set_http_retry_params(retry=True, max_attempts=1, retriable_error_codes=())
    with session:
        for start in range(0, len(readable), BATCH):
            out.update(_post(client, readable[start:start + BATCH]))
    sent = sum(o.result == "sent" for o in out.values())
    log.info("STOW-RS to %s: %d of %d sent", dest.url, sent, len(items))
    return out

