"""The Storage and Verification SCP: application entity, presentation contexts, access control.

Every storage SOP class is accepted at association time, so a router that sends whole studies
never sees a refused context; what we do not process is acknowledged and counted (storage.py).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading

from pydicom import uid
from pynetdicom import AE, AllStoragePresentationContexts, _config
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.config import Settings
from dicomnode.db.session import SessionFactory
from dicomnode.receive.handlers import bindings
from dicomnode.receive.storage import InstanceStore

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


class _SharedPortServer(ThreadedAssociationServer):
    """Binds with SO_REUSEPORT so several receiving processes share one port."""

    def server_bind(self) -> None:
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
        server_class=_SharedPortServer if reuse_port else ThreadedAssociationServer)
    threading.Thread(target=server.serve_forever, name="dicomnode-scp", daemon=True).start()
    ae._servers.append(server)  # as AE.start_server does; server.shutdown() removes it
    host, port = server.server_address[:2]
    log.info("listening as %s on %s:%d%s", settings.node.ae_title, host, port,
             " (TLS)" if ctx else "")
    return server
