"""The facesearch commands that talk to the gateway, against the whole suite on loopback."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from cli.main import main
from gateway.auth import ApiKeys, key_line
from gateway.server import build_server
from gateway.settings import DEFAULT_THRESHOLDS
from launcher.in_process import KEYS
from sdk.client import FaceSearchClient
from services.runtime.background import BackgroundServer
from services.runtime.ports import free_ports
from tests.conftest import DATA, photo_path


@pytest.fixture
def cli(suite, capsys):
    """Runs `facesearch ARGS --address ... --api-key ...` as tenant "cli"; returns (status, stdout, stderr)."""

    def run(*args: str, key: str | None = KEYS["cli"], address: str | None = None):
        command, *rest = args
        options = ["--address", address or suite.address] + (["--api-key", key] if key is not None else [])
        status = main([command, *options, *rest])
        out, err = capsys.readouterr()
        return status, out, err

    return run


@pytest.fixture
def folder(tmp_path):
    album = tmp_path / "album"
    (album / "trip").mkdir(parents=True)
    for name in ["2.jpg", "4.jpg", "9.jpg"]:
        shutil.copy(photo_path("photoprism", name), album / name)
    shutil.copy(photo_path("photoprism", "overlap/1.jpg"), album / "trip" / "together.JPG")
    (album / "notes.txt").write_text("not a photo")
    return album


def test_index_a_folder_then_again_then_with_a_corrupt_photo(cli, folder):
    status, out, err = cli("index", str(folder), "--json")
    assert status == 0, err
    results = {r["photo_id"]: r for r in map(json.loads, out.splitlines())}
    assert set(results) == {"2.jpg", "4.jpg", "9.jpg", "trip/together.JPG"}
    assert results["trip/together.JPG"]["faces_stored"] == 2 and results["9.jpg"]["status"] == "no_face"
    assert "3 indexed, 0 duplicate, 1 no_face, 0 invalid, 0 failed" in err

    status, _, err = cli("index", str(folder))
    assert status == 0 and "0 indexed, 3 duplicate, 1 no_face" in err

    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    status, _, err = cli("index", str(folder))
    assert status == 1 and "broken.jpg: invalid" in err and "1 invalid" in err


def test_enroll_findme_html_verify_identify_and_delete(cli, folder, tmp_path):
    assert cli("index", str(folder))[0] == 0
    status, out, _ = cli("enroll", "Marco", str(photo_path("photoprism", "2.jpg")))
    assert status == 0 and "1 reference face(s)" in out
    person_id = re.search(r"person (\w+)", out).group(1)

    sheet = tmp_path / "marco.html"
    status, out, err = cli("findme", "--person", "marco", "--html", str(sheet))
    assert status == 0, err
    found = [line.split()[1] for line in out.splitlines()]
    assert set(found) == {"2.jpg", "4.jpg", "trip/together.JPG"}
    page = sheet.read_text()
    assert page.count('src="data:image/jpeg;base64,') == 3 and "trip/together.JPG" in page
    by_photo = cli("findme", "--me", str(photo_path("photoprism", "4.jpg")))[1]
    assert {line.split()[1] for line in by_photo.splitlines()} == set(found)

    same = cli("verify", str(photo_path("compreface", "002_A.jpg")), str(photo_path("compreface", "004_A.jpg")))
    different = cli("verify", str(photo_path("compreface", "002_A.jpg")), str(photo_path("compreface", "009_C.jpg")))
    assert (same[0], different[0]) == (0, 1)
    assert "same person" in same[1] and "different people" in different[1] and "facenet-casia" in same[1]

    status, out, _ = cli("identify", str(photo_path("photoprism", "overlap/4.jpg")))
    assert status == 0 and "2 face(s)" in out and "Marco" in out and "unknown" in out
    assert f"{person_id}  Marco" in cli("people")[1]
    assert "3 photos, 4 faces, 1 people" in cli("stats")[1], "photos with faces; 9.jpg has none"

    assert cli("delete-person", person_id)[0] == 0
    assert cli("findme", "--person", "Marco")[0] == 2, "the name is no one now"
    assert cli("delete-photo", "trip/together.JPG")[1].strip() == "deleted 2 face(s)"
    assert cli("delete-photo", "trip/together.JPG")[0] == 1, "NOT_FOUND the second time"
    for photo_id in ["2.jpg", "4.jpg"]:
        cli("delete-photo", photo_id)


def test_exit_codes_for_keys_missing_refused_and_a_gateway_not_there(cli, monkeypatch, tmp_path):
    monkeypatch.delenv("FACESEARCH_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # no var/gateway/local.key here
    status, _, err = cli("stats", key=None)
    assert status == 2 and "no API key" in err
    status, _, err = cli("stats", key="fs_wrong")
    assert status == 4 and "UNAUTHENTICATED" in err
    [port] = free_ports(1)
    status, _, err = cli("stats", address=f"127.0.0.1:{port}")
    assert status == 3 and "UNAVAILABLE" in err
    status, _, err = cli("verify", "missing-a.jpg", "missing-b.jpg")
    assert status == 2 and "no such file" in err


def test_keys_add_prints_a_key_that_only_its_hash_is_stored_for(tmp_path, capsys):
    path = tmp_path / "keys"
    assert main(["keys", "add", "hooli", "--read-only", "--file", str(path)]) == 0
    key = capsys.readouterr().out.strip()
    assert key not in path.read_text()
    caller = ApiKeys.load(path).authenticate([("authorization", f"Bearer {key}")])
    assert (caller.tenant, caller.scope) == ("hooli", "read")
    assert main(["keys", "add", "bad tenant", "--file", str(path)]) == 2


def small_labelled_set(folder) -> None:
    """Six labelled photos (Gates x3 and Yao x2 of one set, a group photo of another) copied
    into ``folder`` with their labels.json."""
    subset = {
        "facenet": ["bill_gates_1.jpg", "bill_gates_2.jpg", "bill_gates_3.jpg", "yao_ming_3.jpg", "yao_ming_4.jpg"],
        "face_recognition": ["obama_biden_1.jpg"],
    }
    labels = json.loads((DATA / "labels.json").read_text())["sets"]
    small = {
        "sets": {s: {**labels[s], "photos": {n: labels[s]["photos"][n] for n in names}} for s, names in subset.items()}
    }
    for set_name, names in subset.items():
        (folder / set_name).mkdir()
        for name in names:
            shutil.copy(photo_path(set_name, name), folder / set_name / name)
    (folder / "labels.json").write_text(json.dumps(small))


def test_calibrate_stores_the_threshold_a_gateway_started_after_it_serves(cli, suite, tmp_path):
    small_labelled_set(tmp_path)
    stored = tmp_path / "var" / "thresholds.json"
    args = ["calibrate", str(tmp_path / "labels.json"), "--far", "0.1", "--thresholds-file", str(stored)]

    # Another person of the tenant would take a place among Identify's candidates: refused.
    with FaceSearchClient(suite.address, KEYS["calibration"]) as client:
        someone = client.enroll("someone", [photo_path("facenet", "zhao_wei_1.jpg")]).person_id
        try:
            status, _, err = cli(*args, key=KEYS["calibration"])
        finally:
            client.delete_person(someone)
    assert status == 2 and "enrolled people" in err and not stored.exists()

    status, out, err = cli(*args, key=KEYS["calibration"])
    assert status == 0, err
    entry = json.loads(stored.read_text())["models"]["facenet-casia"]
    # Same-person: 3 pairs of Gates, 1 of Yao; different-person: 6 between the two of them
    # and each of the 5 against the 2 faces of the other set's photo.
    assert entry["pairs"] == {"same_person": 4, "different_person": 16}
    assert entry["target_far"] == 0.1 and entry["far"] <= 0.1 < entry["far_upper"] and 0 < entry["val"] <= 1
    assert entry["impostors_accepted"] == round(entry["far"] * 16)
    assert f"threshold {entry['threshold']:.4f}" in out and "4 same-person pairs" in out
    assert cli("people", key=KEYS["calibration"])[1].strip() == "", "the people it enrolled are deleted"

    # The running gateway keeps its threshold; one started on the file serves the calibrated one.
    with FaceSearchClient(suite.address, KEYS["calibration"]) as client:
        assert client.stats().settings.similarity_threshold == pytest.approx(DEFAULT_THRESHOLDS["facenet-casia"])
    [port] = free_ports(1)
    settings = suite.gateway_settings.model_copy(update={"port": port, "thresholds_file": stored})
    keys = ApiKeys.parse([key_line("calibration", KEYS["calibration"])], "test keys")
    with (
        BackgroundServer(build_server(settings, suite.embedder, keys)) as gateway,
        FaceSearchClient(gateway.address, KEYS["calibration"]) as client,
    ):
        reported = client.stats().settings
        assert reported.model.id == "facenet-casia"
        assert reported.similarity_threshold == pytest.approx(entry["threshold"])
        verdict = client.verify(photo_path("facenet", "bill_gates_1.jpg"), photo_path("facenet", "bill_gates_2.jpg"))
        assert verdict.settings.similarity_threshold == pytest.approx(entry["threshold"])


def test_eval_measures_through_the_gateway_writes_a_self_contained_page_and_cleans_up(cli, suite, tmp_path):
    small_labelled_set(tmp_path)
    out = tmp_path / "results"
    key = KEYS["evaluation"]

    # A tenant that stores photos would mix them into FindMe's results: refused.
    with FaceSearchClient(suite.address, key) as client:
        [stored] = client.index([photo_path("facenet", "zhao_wei_1.jpg")])
        try:
            status, _, err = cli("eval", str(tmp_path / "labels.json"), "--out", str(out), key=key)
        finally:
            client.delete_photo(stored.photo_id)
    assert status == 2 and "stores 1 photos" in err and not out.exists()

    status, printed, err = cli("eval", str(tmp_path / "labels.json"), "--out", str(out), key=key)
    assert status == 0, err
    result = json.loads((out / "evaluation_facenet-casia.json").read_text())
    v = result["verification"]
    assert result["model"]["id"] == "facenet-casia"
    assert result["configured_threshold"] == pytest.approx(DEFAULT_THRESHOLDS["facenet-casia"])
    assert v["pairs"] == {"same_person": 4, "different_person": 16}  # as `calibrate` pairs them
    assert 0.5 < v["roc_auc"] <= 1 and 0 < v["best_accuracy"]["accuracy"] <= 1
    assert v["at_threshold"]["threshold"] == result["configured_threshold"]
    assert [p["target_far"] for p in v["val_at_far"]] == [0.01, 0.001]
    assert v["same_person_similarity"]["mean"] > v["different_person_similarity"]["mean"]
    # Leave-one-out: the 3 Gates photos and the 2 of Yao each have another of their identity.
    assert result["identification"]["probes"] == 5 and set(result["identification"]["top_k"]) == {"1", "5", "10"}
    # FindMe: Gates alone has 3 photos; enrolled from the first, the other two are the ones to find.
    gates = result["findme"]["people"]["facenet/bill_gates"]
    assert gates["enrolled_from"] == "facenet/bill_gates_1.jpg" and gates["relevant"] == 2
    assert set(result["findme"]["people"]) == {"facenet/bill_gates"} and 0 < result["findme"]["overall"]["f1"] <= 1
    assert result["worst_mistakes"]["different_person"] and result["worst_mistakes"]["same_person"]
    assert "ROC AUC" in printed

    page = (out / "evaluation_facenet-casia.html").read_text()
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page
    assert page.count('<polyline class="roc"') == 1 and 'class="bar"' in page and 'class="threshold"' in page
    assert page.count("data:image/jpeg;base64,") >= 4 and "ROC AUC" in page
    with FaceSearchClient(suite.address, key) as client:
        left = client.stats()
    assert (left.photos, left.faces, left.people) == (0, 0, 0), "what it stored is deleted"

    # Several results on one page, side by side.
    other = dict(result, model={"id": "other-model", "version": "1"})
    (out / "other.json").write_text(json.dumps(other))
    compared = out / "both.html"
    status = main(
        [
            "eval",
            "--compare",
            str(out / "evaluation_facenet-casia.json"),
            str(out / "other.json"),
            "--html",
            str(compared),
        ]
    )
    assert status == 0
    both = compared.read_text()
    assert both.count('<polyline class="roc"') == 2 and "other-model" in both and "https://" not in both


def test_cluster_name_list_faces_say_not_this_person_and_find_two_people(cli, folder):
    def run(*args: str):
        status, out, err = cli(*args, key=KEYS["people"])
        assert status == 0, err
        return out

    for name in ["6.jpg", "12.jpg", "overlap/2.jpg", "overlap/3.jpg", "overlap/4.jpg", "17.jpg", "18.jpg"]:
        shutil.copy(photo_path("photoprism", name), folder / name.replace("/", "-"))
    run("index", str(folder))
    assert "clustering done" in run("cluster", "--full", "--wait")
    listed = run("clusters")
    clusters = re.findall(r"^(c[0-9a-f]+)  (\d+) face\(s\): (.*)$", listed, re.MULTILINE)
    assert len(clusters) >= 2, listed
    m = next(c for c in clusters if "2.jpg#0" in c[2])
    w = next(c for c in clusters if "6.jpg#0" in c[2])
    assert "M" in run("name", m[0], "M") and "W" in run("name", w[0], "W")
    unnamed = run("clusters")
    assert m[0] not in unnamed and w[0] not in unnamed and m[0] in run("clusters", "--named")
    faces = run("faces", "M")
    archive_face = re.search(r"^(\S+)  archive  4.jpg#0", faces, re.MULTILINE)
    assert archive_face, faces
    assert "is not M" in run("not", archive_face[1], "M")
    assert "4.jpg#0" not in run("faces", "M")
    both = run("findme", "--people", "M", "W", "--all")
    found = {line.split()[1] for line in both.splitlines()}
    together = {"trip/together.JPG", "overlap-2.jpg", "overlap-3.jpg", "overlap-4.jpg", "17.jpg", "18.jpg"}
    assert found and found <= together
    assert "hidden" in run("hide", "W") and "W" not in run("people")
