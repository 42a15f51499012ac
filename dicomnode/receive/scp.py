"""The Storage and Verification SCP: application entity, presentation contexts, access control.

Every storage SOP class is accepted at association time, so a router that sends whole studies
never sees a refused context; what we do not process is acknowledged and counted (storage.py).
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
from typing import Any

from pydicom import uid
from pynetdicom import AE, AllStoragePresentationContexts, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.config import Settings
from dicomnode.db.session import SessionFactory
from dicomnode.receive.handlers import bindings
from dicomnode.receive.instance_store import InstanceStore
from dicomnode.receive.reactor import EventRequestHandler

log = logging.getLogger(__name__)

# Transfer syntaxes we accept, each decodable later by pydicom with the installed plugins
# (pylibjpeg-openjpeg, pyjpegls, python-gdcm; RLE and Deflate natively). JPEG Extended
# (Process 2/4) is not offered: no permissively licensed decoder here handles its 12-bit form, and
# accepting what we cannot decode would fail later; senders then fall back to another syntax.
TRANSFER_SYNTAXES = [
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGLosslessSV1,
    uid.JPEGLossless,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
]


def build_ae(settings: Settings) -> AE:
    """Create the AE with our title, timeouts, limits and accepted contexts."""
    # Private or unknown storage classes are still acknowledged (and counted), never refused.
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    # pynetdicom's standard log handlers format every PDU and DIMSE message (and copy each
    # received data set to see whether it is empty) even when its logger drops the lines: bind
    # them only when that logger would print them (logs.setup_logging: DEBUG only).
    verbose = logging.getLogger("pynetdicom").isEnabledFor(logging.INFO)
    _config.LOG_HANDLER_LEVEL = "standard" if verbose else "none"
    node = settings.node
    ae = AE(ae_title=node.ae_title)
    ae.acse_timeout = node.acse_timeout_s
    ae.dimse_timeout = node.dimse_timeout_s
    ae.network_timeout = node.network_timeout_s
    # Per process: the kernel spreads connections by hash, not evenly, so a shared-out limit
    # would refuse senders while another process sits idle.
    ae.maximum_associations = node.max_associations
    ae.maximum_pdu_size = node.maximum_pdu_bytes
    ae.require_called_aet = settings.access.require_called_aet
    ae.require_calling_aet = list(settings.access.allowed_calling_aets)
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:  # always set in pynetdicom's list; typed Optional
            ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
    return ae


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """Server-side TLS context, or None when TLS is off (PS3.15 B.1 secure transport)."""
    tls = settings.tls
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile=str(tls.certificate), keyfile=str(tls.private_key))
    if tls.ca_certificates is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_certificates))
        ctx.verify_mode = (ssl.CERT_REQUIRED if tls.require_client_certificate
                           else ssl.CERT_OPTIONAL)
    return ctx


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server, with every accepted connection bounded in time.

    pynetdicom leaves accepted sockets without a timeout, does the TLS handshake in the
    accepting thread, and keeps an association slot for ``acse_timeout_s`` after a peer connects
    and closes. So one peer stalling mid-PDU would hold a slot for ever, one silent TLS peer would
    stop every other association, and port scans or load-balancer health checks would use up
    ``max_associations``. Here each socket gets ``network_timeout_s``, the handshake runs in the
    connection's own thread, and no association starts before the peer has sent a byte.
    """

    # socketserver's default backlog of 5 drops SYNs when a router opens many associations at
    # once, and each dropped SYN costs the sender a 1 s retransmission.
    request_queue_size = 128

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._closing = threading.Event()
        kwargs.setdefault("request_handler", EventRequestHandler)  # no 1 ms polling
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        if self.socket is None:
            raise OSError("the server socket is closed")
        client, address = self.socket.accept()
        client.settimeout(self.ae.network_timeout)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True,
                                                  do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except OSError as exc:  # ssl.SSLError is an OSError; so is a timeout
                log.warning("TLS handshake with %s failed: %s", client_address[0], exc)
                self.shutdown_request(request)
                return
        elif not self._peer_speaks(request):
            log.debug("connection from %s closed before any PDU", client_address[0])
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)

    def _peer_speaks(self, sock: socket.socket) -> bool:
        """Wait up to the ACSE timeout for the first byte; False on close, silence or stop."""
        deadline = time.monotonic() + float(self.ae.acse_timeout or 0)
        poller = select.poll()  # not select(): descriptors above 1024 are normal under load
        poller.register(sock, select.POLLIN)
        while not self._closing.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if poller.poll(int(min(remaining, 0.5) * 1000) + 1):
                try:
                    return bool(sock.recv(1, socket.MSG_PEEK))
                except OSError:
                    return False
        return False

    def server_close(self) -> None:
        self._closing.set()
        super().server_close()


class _SharedPortServer(_Server):
    """Binds with SO_REUSEPORT so several receiving processes share one port."""

    def server_bind(self) -> None:
        if self.socket is None:
            raise OSError("the server socket is closed")
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def start_scp(settings: Settings, store: InstanceStore, sessions: SessionFactory, *,
              reuse_port: bool = False) -> ThreadedAssociationServer:
    """Start listening in background threads; returns the server (``server_address`` has the port).

    With ``reuse_port`` the kernel spreads new associations over every process bound to the port.
    """
    ae = build_ae(settings)
    ctx = tls_context(settings)
    server = ae.make_server(
        (settings.node.bind_address, settings.node.port),
        evt_handlers=bindings(store, settings.access, sessions),
        ssl_context=ctx,
        server_class=_SharedPortServer if reuse_port else _Server)
    threading.Thread(target=server.serve_forever, name="dicomnode-scp", daemon=True).start()
    ae._servers.append(server)  # as AE.start_server does; server.shutdown() removes it
    host, port = server.server_address[:2]
    log.info("listening as %s on %s:%d%s", settings.node.ae_title, host, port,
             " (TLS)" if ctx else "")
    return server
