"""``[followup] query_pacs``: a DIMSE destination's name or AET@HOST:PORT, checked at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.config import Settings, load_settings
from dicomnode.errors import ConfigError

PACS = ('[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "10.0.0.9"\nport = 104\n'
        'tls = true\n'
        '[[destinations]]\nname = "vna"\nkind = "dicomweb"\nurl = "https://vna/dicom-web"\n')


def _load(tmp_path: Path, followup: str) -> Settings:
    config = tmp_path / "c.toml"
    config.write_text(f"[followup]\n{followup}\n{PACS}")
    return load_settings(config)


def test_off_by_default_and_limits_have_defaults(tmp_path: Path) -> None:
    settings = _load(tmp_path, "")
    assert settings.followup.query_pacs == "" and settings.query_peer() is None
    f = settings.followup
    assert (f.query_max_studies, f.query_max_instances, f.query_wait_max_s) == (20, 600, 900.0)


def test_a_destination_name_gives_its_address_and_tls(tmp_path: Path) -> None:
    peer = _load(tmp_path, 'query_pacs = "pacs"').query_peer()
    assert peer is not None
    assert (peer.ae_title, peer.host, peer.port, peer.tls) == ("PACS", "10.0.0.9", 104, True)


def test_an_address_is_enough(tmp_path: Path) -> None:
    peer = _load(tmp_path, 'query_pacs = "ORTHANC@127.0.0.1:4242"').query_peer()
    assert peer is not None
    assert (peer.ae_title, peer.host, peer.port, peer.tls) == ("ORTHANC", "127.0.0.1", 4242, False)


@pytest.mark.parametrize("value", ['"vna"', '"nowhere"', '"PACS@host"'])
def test_anything_else_is_refused_with_every_problem(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, f"query_pacs = {value}\nquery_max_instances = 0")
    text = str(err.value)
    assert f"query_pacs = {value.replace(chr(34), chr(39))}" in text
    assert "query_max_instances = 0" in text
