"""The measures thresholds are chosen with, on hand-checked numbers."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.measures import operating_point, retrieval, threshold_at_far, top_k_accuracy

GENUINE = [0.9, 0.8, 0.7, 0.6, 0.5, 0.3]
IMPOSTOR = [0.55, 0.4, 0.35, 0.2, 0.1, 0.05, 0.0, -0.1, -0.2, -0.3]


def test_threshold_at_far_refuses_all_but_the_allowed_impostors():
    strict = threshold_at_far(GENUINE, IMPOSTOR, 0.0)
    assert strict.far == 0.0 and 0.55 < strict.threshold < 0.5501
    assert strict.val == pytest.approx(4 / 6)
    one_in_ten = threshold_at_far(GENUINE, IMPOSTOR, 0.1)
    assert one_in_ten.far == pytest.approx(0.1) and 0.4 < one_in_ten.threshold < 0.4001
    assert one_in_ten.val == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="target FAR"):
        threshold_at_far(GENUINE, IMPOSTOR, 1.0)


def test_operating_point_counts_pairs_at_or_above_the_threshold():
    point = operating_point(GENUINE, IMPOSTOR, 0.5)
    assert (point.far, point.val) == (pytest.approx(0.1), pytest.approx(5 / 6))
    with pytest.raises(ValueError):
        operating_point([], IMPOSTOR, 0.5)


def test_retrieval_precision_recall_f1():
    result = retrieval(["a", "b", "c", "x"], ["a", "b", "c", "d", "e", "f"])
    assert (result.precision, result.recall) == (0.75, 0.5)
    assert result.f1 == pytest.approx(0.6)
    assert retrieval([], ["a"]).f1 == 0.0


def test_top_k_accuracy():
    ranked = [["a", "b"], ["b", "a"], ["c", "d", "e", "f", "g", "a"]]
    assert top_k_accuracy(ranked, ["a", "a", "a"], ks=(1, 2, 5, 10)) == {
        1: pytest.approx(1 / 3),
        2: pytest.approx(2 / 3),
        5: pytest.approx(2 / 3),
        10: 1.0,
    }


# --- ROC, accuracy, spread -----------------------------------------------------------------------


def test_roc_auc_is_the_chance_a_same_person_pair_scores_higher():
    from evaluation.measures import roc_auc

    assert roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert roc_auc([0.1, 0.2], [0.9, 0.8]) == 0.0
    assert roc_auc([0.5], [0.5]) == 0.5  # a tie counts half
    # 6 x 10 pairs; impostors above a genuine: 0.55 > 0.5, 0.3 is below 0.55, 0.4, 0.35: 4 of 60.
    assert roc_auc(GENUINE, IMPOSTOR) == pytest.approx(56 / 60)


def test_roc_curve_steps_down_the_thresholds():
    from evaluation.measures import roc_curve

    roc = roc_curve([0.9, 0.6], [0.7, 0.1])
    assert roc.thresholds[1:].tolist() == [0.9, 0.7, 0.6, 0.1]
    assert roc.far.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0] and roc.val.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]


def test_best_accuracy_and_accuracy_at_a_threshold():
    from evaluation.measures import accuracy_at, best_accuracy

    # At 0.5: 5 of 6 genuine accepted, 9 of 10 impostors refused.
    assert accuracy_at(GENUINE, IMPOSTOR, 0.5) == pytest.approx(14 / 16)
    accuracy, threshold = best_accuracy(GENUINE, IMPOSTOR)
    # Between 0.55 and 0.6: 4 genuine accepted, 10 impostors refused; or between 0.4 and 0.5: 5 + 9.
    assert accuracy == pytest.approx(14 / 16) and threshold == pytest.approx(0.45)
    assert accuracy_at(GENUINE, IMPOSTOR, threshold) == pytest.approx(accuracy)
    assert best_accuracy([0.9], [0.1]) == (1.0, pytest.approx(0.5))


def test_spread_of_scores():
    from evaluation.measures import spread

    s = spread([0.2, 0.4, 0.6])
    assert (s.count, s.mean, s.min, s.max) == (3, pytest.approx(0.4), 0.2, 0.6)
    assert s.std == pytest.approx((0.08 / 3) ** 0.5)


# --- verification, identification, FindMe on labelled faces --------------------------------------


def _labelled(tmp_path):
    from evaluation.calibration import found_faces, photos_from_labels

    labels = {
        "sets": {
            "a": {
                "people": {"p": "Pat", "q": "Quinn"},
                "photos": {
                    "p1.jpg": {"faces": 1, "people": ["p"]},
                    "p2.jpg": {"faces": 1, "people": ["p"]},
                    "q1.jpg": {"faces": 1, "people": ["q"]},
                    "q2.jpg": {"faces": 1, "people": ["q"]},
                    "pq.jpg": {"faces": 2, "people": ["p", "q"]},
                },
            },
            "b": {"people": {"p": "Pat"}, "photos": {"p1.jpg": {"faces": 1, "people": ["p"]}}},
        }
    }
    photos = photos_from_labels(labels, tmp_path)
    faces = {p.key: found_faces(p, 2 if p.name == "pq.jpg" else 1) for p in photos}
    return photos, faces


def test_verification_measures_of_known_scores():
    from evaluation.recognition import verification

    v = verification(GENUINE, IMPOSTOR, 0.5)
    assert v["pairs"] == {"same_person": 6, "different_person": 10}
    assert v["roc_auc"] == pytest.approx(56 / 60)
    assert v["at_threshold"] == {"threshold": 0.5, "accuracy": 14 / 16, "far": 0.1, "val": 5 / 6}
    assert [p["target_far"] for p in v["val_at_far"]] == [1e-2, 1e-3]
    assert v["val_at_far"][0]["val"] == pytest.approx(4 / 6) and v["val_at_far"][0]["far"] == 0.0
    assert v["same_person_similarity"]["mean"] == pytest.approx(sum(GENUINE) / 6)
    assert v["roc"][0] == (0.0, 0.0) and v["roc"][-1] == (1.0, 1.0)
    assert (0.0, 4 / 6) in v["roc"] and (0.1, 4 / 6) in v["roc"] and (0.1, 5 / 6) in v["roc"]
    h = v["histograms"]
    assert sum(h["same_person"]) == 6 and sum(h["different_person"]) == 10 and len(h["edges"]) == 41


def test_leave_one_out_ranks_each_reference_against_the_others(tmp_path):
    from evaluation.recognition import identification, leave_one_out

    _, f = _labelled(tmp_path)
    [p1], [p2], [q1], [q2], [b_p1] = f["a/p1.jpg"], f["a/p2.jpg"], f["a/q1.jpg"], f["a/q2.jpg"], f["b/p1.jpg"]
    scored = [
        (p1, p2, 0.7),
        (p1, q1, 0.8),  # q1 is more like p1 than p2 is
        (p1, q2, 0.1),
        (p2, q1, 0.2),
        (p2, q2, 0.3),
        (q1, q2, 0.9),
        (p1, b_p1, 0.99),  # "Pat" of both sets: cannot tell, left out
        (q1, b_p1, 0.95),  # another set: a different person
        (f["a/pq.jpg"][0], p1, 0.9),  # not a reference face of known identity
    ]
    ranked, truth = leave_one_out(scored)
    assert sorted(truth) == [("a", "p"), ("a", "p"), ("a", "q"), ("a", "q")]  # b's Pat has no other photo
    assert [("a", "q"), ("a", "p")] in ranked  # p1: q1 (0.8) above p2 (0.7); not b's Pat
    assert [("b", "p"), ("a", "q"), ("a", "p")] in ranked  # q1: b's Pat is another person
    result = identification(scored, ks=(1, 2))
    # Top-1: p1 wrong (q1), p2 right (p1), q1 wrong (b's Pat), q2 right (q1); all right by top-2.
    assert result == {"probes": 4, "top_k": {"1": 0.5, "2": 1.0}}


def test_findme_targets_and_scores(tmp_path):
    from evaluation.recognition import findme_scores, findme_targets

    photos, _ = _labelled(tmp_path)
    targets = {t.person_key: t for t in findme_targets(photos, min_photos=3)}
    assert set(targets) == {"a/p", "a/q"}  # 3 photos each; b's Pat has one
    pat = targets["a/p"]
    assert pat.enrolment.key == "a/p1.jpg" and pat.relevant == {"a/p2.jpg", "a/pq.jpg"}
    assert pat.ignored == {"b/p1.jpg"} and targets["a/q"].ignored == frozenset()
    found = {"a/p": {"a/p1.jpg", "a/p2.jpg", "a/q1.jpg", "b/p1.jpg"}, "a/q": {"a/q2.jpg", "a/pq.jpg"}}
    scores = findme_scores(list(targets.values()), found)
    # Pat: the enrolment photo and b's Pat are not counted; a/p2 right, a/q1 wrong, a/pq missed.
    assert scores["people"]["a/p"] | {} == {
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "found": 2,
        "relevant": 2,
        "hits": 1,
        "enrolled_from": "a/p1.jpg",
        "enrolled": True,
    }
    assert scores["people"]["a/q"]["precision"] == 1.0 and scores["people"]["a/q"]["recall"] == 1.0
    # Overall: 3 right of 4 found, of 4 labelled.
    assert scores["overall"] == {"precision": 0.75, "recall": 0.75, "f1": 0.75}


def test_worst_mistakes_are_the_extremes_of_each_kind(tmp_path):
    from evaluation.recognition import worst_mistakes

    _, f = _labelled(tmp_path)
    [p1], [p2], [q1], [q2] = f["a/p1.jpg"], f["a/p2.jpg"], f["a/q1.jpg"], f["a/q2.jpg"]
    scored = [(p1, p2, 0.7), (q1, q2, 0.4), (p1, q1, 0.8), (p2, q2, 0.1), (p1, q2, 0.3)]
    worst = worst_mistakes(scored, count=2)
    assert [m["similarity"] for m in worst["different_person"]] == [0.8, 0.3]
    assert [m["similarity"] for m in worst["same_person"]] == [0.4, 0.7]
    assert worst["different_person"][0]["a"]["photo"] == "a/p1.jpg" and worst["same_person"][0]["b"]["face"] == 0


def test_the_mean_face_similarity_follows_from_pair_similarities_alone():
    from evaluation.recognition import BEST_REFERENCE, MEAN_FACE, MEAN_SIMILARITY, rule_similarity

    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 5):
        vectors = rng.normal(size=(n + 1, 16))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        face, references = vectors[0], vectors[1:]
        to_references = (references @ face).tolist()
        among = [float(references[i] @ references[j]) for i in range(n) for j in range(i + 1, n)]
        mean = references.sum(axis=0) / np.linalg.norm(references.sum(axis=0))
        assert rule_similarity(MEAN_FACE, to_references, among) == pytest.approx(float(mean @ face))
        assert rule_similarity(BEST_REFERENCE, to_references, among) == pytest.approx(max(to_references))
        assert rule_similarity(MEAN_SIMILARITY, to_references, among) == pytest.approx(np.mean(to_references))


def test_several_references_scores_each_rule_on_the_same_people(tmp_path):
    from evaluation.calibration import found_faces, photos_from_labels
    from evaluation.recognition import BEST_REFERENCE, MEAN_FACE, several_references

    # Pat's two references point two ways; p3 lies between them, p4 near the first alone;
    # s1 is a stranger near Pat's first reference.
    u, w, z = np.eye(3)
    vectors = {
        "p1.jpg": u,
        "p2.jpg": w,
        "p3.jpg": (u + w) / np.sqrt(2),
        "p4.jpg": (0.75 * u + 0.66 * z) / np.linalg.norm(0.75 * u + 0.66 * z),
        "s1.jpg": (0.72 * u - 0.69 * z) / np.linalg.norm(0.72 * u - 0.69 * z),
    }
    people = {"p1.jpg": ["p"], "p2.jpg": ["p"], "p3.jpg": ["p"], "p4.jpg": ["p"], "s1.jpg": ["s"]}
    labels = {"sets": {"a": {"photos": {n: {"faces": 1, "people": p} for n, p in people.items()}}}}
    photos = photos_from_labels(labels, tmp_path)
    faces = {p.key: found_faces(p, 1)[0] for p in photos}
    keys = sorted(faces)
    scored = [
        (faces[a], faces[b], float(vectors[a[2:]] @ vectors[b[2:]])) for i, a in enumerate(keys) for b in keys[i + 1 :]
    ]
    result = several_references(scored, photos, threshold=0.7, counts=(1, 2), min_photos=3)
    one, two = result["references"]["1"], result["references"]["2"]
    assert one["people"] == 1 and two["people"] == 1  # Pat (s has one photo)
    # One reference (p1): p3 (0.71) and p4 (0.75) found, and the stranger (0.72): P 2/3, R 2/3.
    assert one["rules"][MEAN_FACE]["precision"] == pytest.approx(2 / 3)
    assert one["rules"][MEAN_FACE] == one["rules"][BEST_REFERENCE]
    # Two (p1, p2): by the mean face p3 (1.0) alone; by the best reference p3, p4 and the stranger.
    assert two["rules"][MEAN_FACE] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3)}
    assert two["rules"][BEST_REFERENCE]["precision"] == pytest.approx(2 / 3)
    assert two["rules"][BEST_REFERENCE]["recall"] == 1.0
