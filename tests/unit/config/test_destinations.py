"""[[destinations]]: DIMSE and DICOMweb kinds, their keys, authentication rules, --forward URLs."""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

import pytest

from dicomnode.cli import _settings
from dicomnode.config import Destination, load_settings
from dicomnode.errors import ConfigError


def _load(tmp_path: Path, body: str):  # type: ignore[no-untyped-def]
    f = tmp_path / "d.toml"
    f.write_text(body)
    return load_settings(f)


def _problems(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, body)
    return str(err.value)


def test_dicomweb_destination_with_bearer_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    s = _load(tmp_path, '[[destinations]]\nname = "web"\nkind = "dicomweb"\n'
                        'url = "https://pacs.example.org/dicom-web"\nauth = "bearer"\n'
                        'secret_file = "token"\noutputs = ["seg", "sr"]\n')
    (d,) = s.destinations
    assert (d.kind, d.url, d.auth, d.secret_file) == ("dicomweb", "https://pacs.example.org/dicom-web",
                                                      "bearer", tmp_path / "token")
    assert d.address == "https://pacs.example.org/dicom-web" and d.outputs == ("seg", "sr")


def test_dimse_stays_the_default_kind(tmp_path: Path) -> None:
    (d,) = _load(tmp_path, '[[destinations]]\nae_title = "PACS"\nhost = "h"\nport = 104\n').destinations
    assert (d.kind, d.address) == ("dimse", "PACS@h:104")


def test_every_dicomweb_problem_at_once(tmp_path: Path) -> None:
    text = _problems(tmp_path, (
        '[[destinations]]\nkind = "dicomweb"\nae_title = "X"\n'  # no url, a DIMSE key
        '[[destinations]]\nkind = "dicomweb"\nurl = "ftp://x/dicom-web"\n'
        '[[destinations]]\nkind = "dicomweb"\nurl = "https://u:p@pacs/dicom-web"\n'
        '[[destinations]]\nkind = "dicomweb"\nurl = "https://pacs/dicom-web"\nauth = "bearer"\n'
        '[[destinations]]\nkind = "dicomweb"\nurl = "https://pacs/dicom-web"\nauth = "basic"\n'
        'secret_file = "missing"\n'
        '[[destinations]]\nkind = "dicomweb"\nurl = "https://pacs/dicom-web"\nauth = "digest"\n'
        '[[destinations]]\nkind = "carrier-pigeon"\n'))
    assert "[destinations[0]] ae_title does not apply" in text
    assert "[destinations[0]] url is required" in text
    assert "[destinations[1]] url = 'ftp://x/dicom-web'" in text
    assert "[destinations[2]] url: no credentials" in text
    assert "[destinations[3]] auth = 'bearer' needs secret_file" in text
    assert 'auth = "basic" needs a username' in text and "[destinations[4]]" in text
    assert "[destinations[5]] auth = 'digest'" in text
    assert "[destinations[6]] kind = 'carrier-pigeon'" in text


def test_secret_over_plain_http_only_to_loopback(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    body = '[[destinations]]\nkind = "dicomweb"\nurl = "http://{host}/dicom-web"\nauth = "bearer"\n' \
           'secret_file = "token"\n'
    assert "plain http" in _problems(tmp_path, body.format(host="pacs.example.org"))
    for host in ("127.0.0.1:8042", "localhost", "[::1]:80"):
        assert _load(tmp_path, body.format(host=host)).destinations[0].auth == "bearer"


def test_forward_takes_dicomweb_urls_and_dicom_peers(tmp_path: Path) -> None:
    args = argparse.Namespace(config=str(tmp_path / "empty.toml"), storage=str(tmp_path / "s"),
                              forward=["http://127.0.0.1:8042/dicom-web/", "PACS@127.0.0.1:104"])
    (tmp_path / "empty.toml").write_text("")
    web, dimse = _settings(args).destinations
    assert (web.kind, web.url, web.name) == ("dicomweb", "http://127.0.0.1:8042/dicom-web", "forward-1")
    assert (dimse.kind, dimse.ae_title, dimse.port) == ("dimse", "PACS", 104)
    args.forward = ["https://user:pw@pacs/dicom-web"]
    with pytest.raises(ConfigError, match="no credentials"):
        _settings(args)


def test_client_tls_context_only_with_tls_and_always_verifying() -> None:
    plain = Destination(name="pacs", ae_title="PACS", host="pacs.example", port=104)
    assert plain.client_ssl_context() is None
    ctx = Destination(name="pacs", ae_title="PACS", host="pacs.example", port=2762,
                      tls=True).client_ssl_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
