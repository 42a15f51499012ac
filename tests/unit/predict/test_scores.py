"""CAVE score (Haapaniemi 2014): hand-computed cases."""

import math

import pytest

from dicomnode.predict.scores import CAVE_RISK, cave_from_features, cave_score


def test_published_table():
    assert CAVE_RISK == (0.006, 0.036, 0.098, 0.348, 0.462)


@pytest.mark.parametrize(
    ("c", "age", "vol", "e", "score", "risk"),
    [
        (True, 60, 20.0, True, 4, 0.462),  # every component
        (False, 70, 5.0, False, 0, 0.006),  # none
        (True, 70, 10.0, False, 1, 0.036),  # 10.0 mL is not > 10 mL
        (False, 65, 10.5, False, 1, 0.036),  # 65 is not < 65; 10.5 > 10
        (False, 64.9, 3.0, True, 2, 0.098),  # A + E
        (True, 40, 50.0, False, 3, 0.348),  # C + A + V
    ],
)
def test_complete(c, age, vol, e, score, risk):
    r = cave_score(c, age, vol, e)
    assert r.score == score
    assert not r.partial and r.unknown == ()
    assert r.max_possible == score
    assert r.risk == (risk, risk)
    assert r.risk_point == risk


def test_components():
    r = cave_score(True, 70, 12.0, False)
    assert r.components == {
        "cortical_involvement": True,
        "age_under_65": False,
        "volume_over_10ml": True,
        "early_seizure": False,
    }
    assert r.score == 2


def test_admission_early_seizure_unknown():
    # lobar 30 mL clot in a 50-year-old: C + A + V = 3, E unknown -> 3 or 4.
    r = cave_score(True, 50, 30.0, None)
    assert r.partial and r.unknown == ("early_seizure",)
    assert (r.score, r.max_possible) == (3, 4)
    assert r.risk == (0.348, 0.462)
    assert r.risk_point is None
    assert r.components["early_seizure"] is None
    assert r.describe() == "CAVE 3-4 (early_seizure unknown): late-seizure risk 34.8-46.2 %"


def test_age_and_seizure_unknown():
    r = cave_score(False, None, 11.0, None)
    assert (r.score, r.max_possible) == (1, 3)
    assert r.risk == (0.036, 0.348)
    assert set(r.unknown) == {"age_under_65", "early_seizure"}
    r = cave_score(False, math.nan, 11.0, None)  # NaN is unknown, too
    assert (r.score, r.max_possible) == (1, 3)


def test_zero_partial():
    r = cave_score(False, 80, 2.0, None)
    assert (r.score, r.max_possible, r.risk) == (0, 1, (0.006, 0.036))
    assert cave_score(False, 80, 2.0, False).describe() == "CAVE 0/4: late-seizure risk 0.6 %"


def test_invalid():
    with pytest.raises(ValueError, match="age_y"):
        cave_score(True, -1, 5.0, None)
    with pytest.raises(ValueError, match="ich_volume_ml"):
        cave_score(True, 50, -5.0, None)


def test_from_features():
    f = {
        "m_cortical_involvement": 1.0,
        "m_ich_volume_ml": 25.0,
        "hdr_age_y": math.nan,
        "clin_age_y": 60.0,
        "clin_early_seizure": math.nan,
    }
    r = cave_from_features(f)
    assert (r.score, r.max_possible) == (3, 4)
    f["hdr_age_y"] = 70.0  # the header wins over the sidecar
    f["clin_early_seizure"] = 1.0
    r = cave_from_features(f)
    assert (r.score, r.partial, r.risk_point) == (3, False, 0.348)
