"""Configuration: lookup order, validation of every key, all problems at once."""

import tomllib
from pathlib import Path

import pytest

from dicomnode.config import find_config, load_settings, parse_peer
from dicomnode.errors import ConfigError
from tests.conftest import REPO


def test_shipped_config_is_valid_and_resolves_paths_against_its_folder() -> None:
    s = load_settings(REPO / "config" / "dicomnode.toml")
    assert s.node.ae_title == "DICOMNODE"
    assert s.storage.path == (REPO / "var" / "dicomnode").resolve()
    assert s.database_url == f"sqlite:///{s.storage.path / 'dicomnode.db'}"
    assert s.access.allowed_networks == ("127.0.0.0/8", "::1/128")


def test_every_shipped_key_is_commented() -> None:
    lines = (REPO / "config" / "dicomnode.toml").read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.lstrip().startswith("#"):
            assert lines[i - 1].lstrip().startswith("#") or "=" in lines[i - 1], \
                f"key without comment: {line}"


def test_all_problems_reported_at_once_with_path(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('[node]\nport = 70000\nae_title = "THIS TITLE IS FAR TOO LONG"\nbogus = 1\n'
                 '[access]\nallowed_networks = ["not-a-net"]\n'
                 '[eligibility]\nhead_description_regex = "("\n[surprise]\n'
                 '[database]\nauto_upgrade = "yes"\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(f)
    text = str(exc.value)
    assert str(f) in text
    for fragment in ("port", "ae_title", "bogus", "not-a-net", "head_description_regex",
                     "surprise", "[database] auto_upgrade = 'yes': expected true or false"):
        assert fragment in text
    assert len(exc.value.problems) == 7


def test_relative_paths_resolve_against_file_folder(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    f = tmp_path / "etc" / "node.toml"
    f.write_text('[storage]\npath = "../data"\n')
    assert load_settings(f).storage.path == (tmp_path / "data").resolve()


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_config(None, environ={}) is None or find_config(None, environ={}).is_file()
    local = tmp_path / "config" / "dicomnode.toml"
    local.parent.mkdir()
    local.write_text("")
    assert find_config(None, environ={}) == Path("config/dicomnode.toml")
    assert find_config(None, environ={"DICOMNODE_CONFIG": "/x.toml"}) == Path("/x.toml")
    assert find_config("/y.toml", environ={"DICOMNODE_CONFIG": "/x.toml"}) == Path("/y.toml")


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.toml")


def test_overrides_are_validated(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("")
    s = load_settings(f, overrides={"node.port": 0, "node.ae_title": "X", "storage.path": "s"})
    assert s.node.port == 0 and s.node.ae_title == "X"
    assert s.storage.path == (Path.cwd() / "s").resolve()
    with pytest.raises(ConfigError, match="--port"):
        load_settings(f, overrides={"node.port": 99999})


def test_tls_requires_files(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[tls]\nenabled = true\nrequire_client_certificate = true\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(f)
    assert len(exc.value.problems) == 3


def test_parse_peer() -> None:
    assert parse_peer("ORTHANC@127.0.0.1:4242") == ("ORTHANC", "127.0.0.1", 4242)
    assert parse_peer("A@[::1]:104") == ("A", "::1", 104)
    for bad in ("ORTHANC@host", "host:104", "A@h:0", "WAYTOOLONGAETITLE17@h:1"):
        with pytest.raises(ValueError):
            parse_peer(bad)


def test_every_section_of_the_shipped_file_is_read(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[worker]\nenabled = false\npoll_interval_s = 0.5\n'
                 '[delivery]\ninterval_s = 7\nretry_base_s = 3\n'
                 '[segmentation]\nbackend = "unet"\n[prediction]\nenabled = false\n'
                 '[[destinations]]\nname = "p"\nae_title = "PACS"\nhost = "h"\nport = 104\n')
    s = load_settings(f)
    assert (s.worker.enabled, s.worker.poll_interval_s) == (False, 0.5)
    assert (s.delivery.interval_s, s.delivery.retry_base_s) == (7.0, 3.0)
    assert s.segmentation.backend == "unet" and s.prediction.enabled is False
    assert [d.ae_title for d in s.destinations] == ["PACS"]
    shipped = tomllib.loads((REPO / "config" / "dicomnode.toml").read_text())
    for section in shipped:
        assert hasattr(s, section), section


def test_left_out_model_keys_default_to_the_shipped_models(tmp_path: Path) -> None:
    """Keys left out point at the repository's own models/ (and ../shared for BLAST-CT)."""
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    s = load_settings(empty)
    assert s.prediction.he_model == REPO / "models" / "he-multitask-he"
    assert s.prediction.pse_model == REPO / "models" / "pse-psenet"
    assert s.segmentation.unet_model == REPO / "models" / "ich-unet-synth"
    # Resolved: ../shared may be a link beside the clone (as in a checkout with shared linked in).
    assert s.segmentation.blast_ct_model == (REPO.parent / "shared" / "models" / "blast-ct-v1").resolve()
