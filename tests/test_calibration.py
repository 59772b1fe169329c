"""Thresholds for a target FAR: the rule, the bound, the pairs the labels allow, and the
thresholds file the gateway reads."""

from __future__ import annotations

import json

import pytest
from scipy.stats import binom

from evaluation.calibration import (
    GENUINE,
    IMPOSTOR,
    calibrate,
    far_upper_bound,
    found_faces,
    labelled_pairs,
    load_labels,
    pair_kind,
    photos_from_labels,
)
from gateway.settings import GatewaySettings

IMPOSTOR_SCORES = [i / 1000 for i in range(1000)]  # 0.000 .. 0.999
GENUINE_SCORES = [0.5, 0.99, 0.995, 1.0]


def test_the_threshold_is_the_lowest_whose_far_is_at_most_the_target():
    one_percent = calibrate(GENUINE_SCORES, IMPOSTOR_SCORES, 0.01)
    # 10 impostors (0.990-0.999) may pass; 0.989 must not, and 0.9891 is the lowest 4-decimal cut.
    assert one_percent.threshold == pytest.approx(0.9891)
    assert one_percent.impostors_accepted == 10 and one_percent.far == pytest.approx(0.01)
    assert one_percent.val == pytest.approx(0.75)
    assert one_percent.different_person_pairs == 1000 and one_percent.same_person_pairs == 4

    strict = calibrate(GENUINE_SCORES, IMPOSTOR_SCORES, 0.0)
    assert strict.threshold == pytest.approx(0.9991) and strict.far == 0.0 and strict.val == pytest.approx(0.25)


def test_tied_impostors_at_the_cut_are_all_refused():
    ties = calibrate([0.95], [0.9] * 5 + [0.1] * 95, 0.03)
    assert ties.threshold == pytest.approx(0.9001) and ties.far == 0.0 and ties.val == 1.0


def test_far_upper_bound_is_the_one_sided_clopper_pearson_bound():
    # None of n accepted: the bound solves (1 - u)^n = 0.05.
    assert far_upper_bound(0, 1000) == pytest.approx(1 - 0.05 ** (1 / 1000), rel=1e-9)
    # k accepted: the rate u at which k or fewer would be seen only 5% of the time.
    upper = far_upper_bound(10, 1000)
    assert binom.cdf(10, 1000, upper) == pytest.approx(0.05, abs=1e-6) and 0.01 < upper < 0.02
    assert far_upper_bound(5, 5) == 1.0
    assert calibrate(GENUINE_SCORES, IMPOSTOR_SCORES, 0.01).far_upper == pytest.approx(upper)
    with pytest.raises(ValueError):
        far_upper_bound(3, 2)


LABELS = {
    "sets": {
        "a": {
            "people": {"p": "Pat Lee", "q": "Quinn Roe", "r": "Rae Kim"},
            "photos": {
                "p1.jpg": {"faces": 1, "people": ["p"]},
                "p2.jpg": {"faces": 1, "people": ["p"]},
                "q1.jpg": {"faces": 1, "people": ["q"]},
                "pq.jpg": {"faces": 2, "people": ["p", "q"]},
                "qr.jpg": {"faces": 2, "people": ["q", "r"]},
                "q_and_stranger.jpg": {"faces": 2, "people": ["q"]},
                "crowd.jpg": {"faces": 3, "people": []},
            },
        },
        "b": {
            "people": {"p": "Pat Lee", "y": "Yan Sun"},  # "Pat Lee" again: maybe the same person
            "photos": {"p1.jpg": {"faces": 1, "people": ["p"]}, "y1.jpg": {"faces": 1, "people": ["y"]}},
        },
    }
}


@pytest.fixture
def faces(tmp_path):
    photos = {p.key: p for p in photos_from_labels(LABELS, tmp_path)}
    counts = {"a/pq.jpg": 2, "a/qr.jpg": 2, "a/crowd.jpg": 3, "a/q_and_stranger.jpg": 2}
    return {key: found_faces(photo, counts.get(key, 1)) for key, photo in photos.items()}


def test_pairs_within_a_set_follow_the_identities(faces):
    [p1], [p2], [q1] = faces["a/p1.jpg"], faces["a/p2.jpg"], faces["a/q1.jpg"]
    assert pair_kind(p1, p2) == GENUINE
    assert pair_kind(p1, q1) == IMPOSTOR
    # Two faces of one photo are two people; a face is not paired with itself.
    pq = faces["a/pq.jpg"]
    assert pair_kind(pq[0], pq[1]) == IMPOSTOR and pair_kind(pq[0], pq[0]) is None
    # A group-photo face may be anyone labelled in it (or unlabelled): not used against them.
    assert pair_kind(p1, pq[0]) is None and pair_kind(p1, faces["a/crowd.jpg"][0]) is None
    assert pair_kind(q1, faces["a/q_and_stranger.jpg"][1]) is None
    assert pair_kind(p1, faces["a/q_and_stranger.jpg"][0]) is None  # an unlabelled face: maybe P
    # ... but a fully labelled photo without P cannot hold P, nor two such photos one person.
    qr = faces["a/qr.jpg"]
    assert pair_kind(p1, qr[0]) == IMPOSTOR and pair_kind(qr[1], p1) == IMPOSTOR
    assert pair_kind(pq[0], qr[0]) is None  # both may be Q


def test_a_one_person_photo_with_two_faces_found_is_not_an_identity(faces):
    p1 = faces["a/p1.jpg"][0].photo
    two = found_faces(p1, 2)
    assert all(f.identity is None and f.anyone for f in two)
    assert pair_kind(two[0], faces["a/p2.jpg"][0]) is None and pair_kind(two[0], faces["a/q1.jpg"][0]) is None
    assert pair_kind(two[0], two[1]) == IMPOSTOR


def test_faces_of_different_sets_are_different_people_unless_named_alike(faces):
    [q1], [p1], [crowd] = faces["a/q1.jpg"], faces["a/p1.jpg"], faces["a/crowd.jpg"][:1]
    [b_p1], [b_y1] = faces["b/p1.jpg"], faces["b/y1.jpg"]
    assert pair_kind(q1, b_y1) == IMPOSTOR and pair_kind(q1, b_p1) == IMPOSTOR
    assert pair_kind(crowd, b_p1) == IMPOSTOR  # an unlabelled face of another set
    assert pair_kind(p1, b_p1) is None  # "Pat Lee" in both sets
    assert pair_kind(faces["a/pq.jpg"][1], b_p1) is None  # may be Pat Lee


def test_labelled_pairs_sorts_the_scores(faces):
    [p1], [p2], [q1], [b_y1] = faces["a/p1.jpg"], faces["a/p2.jpg"], faces["a/q1.jpg"], faces["b/y1.jpg"]
    scored = [(p1, p2, 0.8), (p1, q1, 0.2), (q1, b_y1, 0.3), (p1, faces["a/pq.jpg"][0], 0.9)]
    assert labelled_pairs(scored) == ([0.8], [0.2, 0.3])


def test_labels_come_from_a_labels_file_or_a_folder_per_person(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    from_file = load_labels(tmp_path / "labels.json")
    assert len(from_file) == 9 and from_file[0].path == tmp_path / "a" / "p1.jpg"
    assert {p.key for p in load_labels(tmp_path)} == {p.key for p in from_file}

    album = tmp_path / "album"
    for person, names in {"Ada": ["1.jpg", "2.PNG"], "Bob": ["1.jpg"]}.items():
        (album / person).mkdir(parents=True)
        for name in names:
            (album / person / name).write_bytes(b"")
    (album / "Bob" / "notes.txt").write_text("not a photo")
    photos = load_labels(album)
    assert [(p.name, p.single) for p in photos] == [("Ada/1.jpg", "Ada"), ("Ada/2.PNG", "Ada"), ("Bob/1.jpg", "Bob")]
    assert pair_kind(*found_faces(photos[0], 1), *found_faces(photos[1], 1)) == GENUINE
    assert pair_kind(*found_faces(photos[0], 1), *found_faces(photos[2], 1)) == IMPOSTOR


def test_the_gateway_takes_calibrated_thresholds_from_the_file(tmp_path):
    path = tmp_path / "thresholds.json"
    settings = GatewaySettings(thresholds_file=path, similarity_thresholds={"facenet-casia": 0.45, "other": 0.3})
    assert settings.with_calibrated_thresholds() is settings  # no file yet
    path.write_text(json.dumps({"models": {"facenet-casia": {"threshold": 0.6123, "far": 0.001}}}))
    calibrated = settings.with_calibrated_thresholds()
    assert calibrated.threshold("facenet-casia") == pytest.approx(0.6123) and calibrated.threshold("other") == 0.3
    for bad in ({"models": {"facenet-casia": {"threshold": 2.0}}}, {"facenet-casia": 0.5}, "[1"):
        path.write_text(bad if isinstance(bad, str) else json.dumps(bad))
        with pytest.raises(ValueError, match="thresholds file"):
            settings.with_calibrated_thresholds()
    unset = GatewaySettings(thresholds_file=None)
    assert unset.with_calibrated_thresholds() is unset
