"""`dicomnode outcomes import`: every row checked with its line number, all or nothing, and
importing the same file again changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from dicomnode.cli import main
from dicomnode.db.models import ClinicalOutcome, Study
from dicomnode.db.outcome_import import import_outcomes
from dicomnode.db.session import make_sessions

UID = "1.2.826.0.1.3680043.8.498.77"


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, Path]:
    """A configuration whose database knows one study (accession ACC-1)."""
    root = tmp_path / "storage"
    config = tmp_path / "c.toml"
    config.write_text(f'[storage]\npath = "{root}"\n')
    sessions = make_sessions(f"sqlite:///{root / 'dicomnode.db'}")
    with sessions.begin() as s:
        s.add(Study(study_instance_uid=UID, patient_id="P1", accession_number="ACC-1"))
    sessions.kw["bind"].dispose()
    return config, root / "dicomnode.db"


def _rows(db: Path) -> list[tuple[str, str, str, bool]]:
    sessions = make_sessions(f"sqlite:///{db}")
    try:
        with sessions() as s:
            return [(o.key_kind, o.key, o.outcome, o.value) for o in
                    s.scalars(select(ClinicalOutcome).order_by(ClinicalOutcome.id))]
    finally:
        sessions.kw["bind"].dispose()


def test_bad_rows_are_named_by_line_and_nothing_is_imported(
        node: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, db = node
    csv_file = tmp_path / "outcomes.csv"
    csv_file.write_text(
        "accession_number,study_instance_uid,seizure_1y,notes\n"
        "ACC-1,,yes,fine\n"                      # line 2: good
        ",,no,\n"                                # line 3: no key
        ",1.2.3.04x,no,\n"                       # line 4: not a UID
        "ACC-2,,maybe,\n"                        # line 5: not yes/no
        "ACC-1,,no,\n"                           # line 6: contradicts line 2
        "THIS-ACCESSION-IS-TOO-LONG,,1,\n")      # line 7: longer than SH allows
    assert main(["outcomes", "import", str(csv_file), "--config", str(config)]) == 1
    err = capsys.readouterr().err
    for line, text in ((3, "no key"), (4, "not a valid UID"), (5, "'maybe' is not yes/no"),
                       (6, "contradicts line 2"), (7, "not a valid accession number")):
        assert f"outcomes.csv line {line}: " in err and text in err, (line, err)
    assert "line 2:" not in err and "5 problems" in err and "nothing imported" in err
    assert _rows(db) == []


def test_a_file_without_key_or_outcome_columns_is_refused(node: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    _, db = node
    bad = tmp_path / "bad.csv"
    bad.write_text("patient,seizure_1y\nP1,yes\n")
    sessions = make_sessions(f"sqlite:///{db}")
    report = import_outcomes(sessions, bad)
    assert report.errors == ["bad.csv: no key column (accession_number or study_instance_uid)"]
    bad.write_text("accession_number,mrs\nACC-1,3\n")
    report = import_outcomes(sessions, bad)
    assert len(report.errors) == 1 and "no outcome column" in report.errors[0]
    assert report.ignored_columns == ["mrs"]
    bad.write_bytes("accession_number,pse\nMÜLLER-1,ja\n".encode("latin-1"))
    report = import_outcomes(sessions, bad)
    assert len(report.errors) == 1 and "not UTF-8 text" in report.errors[0]
    sessions.kw["bind"].dispose()


def test_import_is_idempotent_and_records_changes(node: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config, db = node
    csv_file = tmp_path / "outcomes.csv"
    csv_file.write_text("AccessionNumber,StudyInstanceUID,pse\n"
                        "ACC-1,,Yes\n"
                        f",{UID},n\n"
                        "ACC-9,,\n"     # unknown: nothing recorded
                        "ACC-7,,1\n")   # no such study yet: recorded
    args = ["outcomes", "import", str(csv_file), "--config", str(config)]
    assert main(args) == 0
    assert "3 outcomes recorded" in capsys.readouterr().out
    first = _rows(db)
    assert first == [("accession_number", "ACC-1", "pse", True),
                     ("study_instance_uid", UID, "pse", False),
                     ("accession_number", "ACC-7", "pse", True)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "0 outcomes recorded, 0 changed, 3 already recorded, 1 empty" in out
    assert "1 of no study" in out and _rows(db) == first
    csv_file.write_text("accession_number,pse\nACC-7,no\n")
    assert main(args) == 0
    assert "1 changed" in capsys.readouterr().out
    assert _rows(db)[2] == ("accession_number", "ACC-7", "pse", False)
