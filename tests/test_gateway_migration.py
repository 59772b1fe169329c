"""An archive moved from FaceNet (CASIA) to dlib's ResNet on real photos: the real detector
making each model's crops, the session's Triton serving FaceNet and a second Triton serving
dlib, the search service on the edge store, and `facesearch migrate` reading the photos
again from their URIs."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from facesearch.v1 import common_pb2, facesearch_pb2, search_pb2, search_pb2_grpc
from launcher.in_process import KEYS, LocalSuite, prepare_model_repository
from sdk.client import FaceSearchClient
from tests.conftest import DATA, new_triton_server, photo_bytes
from tests.test_migration import facesearch

OLD, NEW = "facenet-casia", "dlib-resnet"
SET = "photoprism"


@pytest.fixture(scope="module")
def dlib_triton(tmp_path_factory: pytest.TempPathFactory):
    models = prepare_model_repository(tmp_path_factory.mktemp("dlib-models"), weights="dlib")
    with new_triton_server(models.model_repository / "onnx-python", tmp_path_factory.mktemp("dlib-triton")) as server:
        yield server


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, onnx_python_models, triton_server, dlib_triton) -> Iterator[LocalSuite]:
    suite = LocalSuite(
        tmp_path_factory.mktemp("migration-suite"),
        onnx_python_models,
        triton=triton_server,
        embedder_urls={NEW: dlib_triton.grpc_url},
        cluster_after_new_faces=0,
    )
    yield suite
    suite.stop()


def stored(suite: LocalSuite, tenant: str, model_id: str, dimension: int) -> list[search_pb2.FaceRecord]:
    with suite.internal_channel(suite.search_address) as channel:
        stub = search_pb2_grpc.SearchStub(channel)
        request = search_pb2.ScrollRequest(
            tenant=tenant,
            model=common_pb2.EmbeddingModel(id=model_id, dimension=dimension),
            page_size=1000,
            with_vectors=True,
        )
        return list(stub.Scroll(request).faces)


def photo(name: str) -> facesearch_pb2.Photo:
    return facesearch_pb2.Photo(id=name, uri=str(DATA / SET / name), content=photo_bytes(SET, name))


def test_an_archive_moves_from_facenet_to_dlib_with_its_people(two_models: LocalSuite, labels: dict) -> None:
    tenant = "people"
    client = FaceSearchClient(two_models.address, KEYS[tenant], timeout_s=300)
    names = list(labels[SET]["photos"])
    list(client.index(photo(name) for name in names))
    m = client.enroll("M", [photo("2.jpg")]).person_id
    before = {x.photo_id for x in client.find_me_all(person_id=m)}
    truth = {name for name, p in labels[SET]["photos"].items() if "M" in p["people"]}
    assert before and before <= truth
    old_faces = {f.id: f for f in stored(two_models, tenant, OLD, 512)}

    run = facesearch(two_models.address, KEYS[tenant], "migrate", "--to", NEW, timeout_s=600)
    assert run.returncode == 0, run.stderr
    assert f"switched from {OLD} to {NEW}" in run.stdout
    assert client.stats().settings.model.id == NEW

    new_faces = {f.id: f for f in stored(two_models, tenant, NEW, 128)}
    assert set(new_faces) == set(old_faces), "every face found again, under its own id"
    assert all(len(f.vector) == 128 for f in new_faces.values())
    assert all(new_faces[i].payload.person_id == f.payload.person_id for i, f in old_faces.items())
    # The vectors are dlib's: the reference of M matches the same face in the archive exactly.
    [reference] = [f for f in new_faces.values() if f.payload.source == search_pb2.FACE_SOURCE_ENROLLMENT]
    [archive_face] = [
        f
        for f in new_faces.values()
        if f.payload.photo_id == "2.jpg" and f.payload.source == search_pb2.FACE_SOURCE_GALLERY
    ]
    assert float(np.dot(reference.vector, archive_face.vector)) > 0.999
    verdict = client.verify(photo("2.jpg"), photo("2.jpg"))
    assert verdict.settings.model.id == NEW and verdict.similarity > 0.999

    after = {x.photo_id for x in client.find_me_all(person_id=m)}
    assert after <= truth, "no stranger with dlib at its calibrated threshold"
    assert len(after) >= len(before) - 2, (before, after)
    assert [p.display_name for p in client.list_people()] == ["M"]
    client.close()
