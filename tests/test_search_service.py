"""The Search service as a client sees it: a real gRPC server on loopback over the edge store."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from facesearch.v1 import common_pb2, search_pb2, search_pb2_grpc
from services.runtime.background import BackgroundServer
from services.search.server import build_server
from services.search.settings import SearchSettings

MODEL = common_pb2.EmbeddingModel(id="facenet-casia", version="1", dimension=512)


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    settings = SearchSettings(
        host="127.0.0.1", port=0, log_format="text", path=tmp_path_factory.mktemp("search"), max_batch_points=50
    )
    server = BackgroundServer(build_server(settings))
    with grpc.insecure_channel(server.address) as channel:
        yield search_pb2_grpc.SearchStub(channel)
    server.stop()


def unit(seed: int) -> list[float]:
    vector = np.random.default_rng(seed).normal(size=512)
    return (vector / np.linalg.norm(vector)).tolist()


def face(seed: int, photo: str, index: int = 0, person: str = "", source=search_pb2.FACE_SOURCE_GALLERY):
    return search_pb2.FaceRecord(
        vector=unit(seed),
        payload=search_pb2.FacePayload(
            photo_id=photo,
            photo_uri=f"file:///{photo}.jpg",
            photo_hash=f"sha-{photo}",
            face_index=index,
            box=common_pb2.BoundingBox(x_min=10, y_min=20, x_max=110, y_max=140),
            confidence=0.98,
            quality=common_pb2.FaceQuality(blur_variance=321.0, face_size=100),
            person_id=person,
            source=source,
            person_name=person.title(),
            metadata={"album": "summer"},
        ),
    )


def test_upsert_query_scroll_and_delete_through_grpc(search):
    faces = [face(i, f"p{i // 2}", i % 2, person="ann" if i < 4 else "") for i in range(10)]
    upserted = search.Upsert(search_pb2.UpsertRequest(tenant="t1", model=MODEL, faces=faces), timeout=30)
    assert len(upserted.ids) == 10 and len(set(upserted.ids)) == 10
    again = search.Upsert(search_pb2.UpsertRequest(tenant="t1", model=MODEL, faces=faces[:2]), timeout=30)
    assert list(again.ids) == list(upserted.ids[:2]), "same photo bytes and face index give the same id"

    reply = search.Query(
        search_pb2.QueryRequest(
            tenant="t1",
            model=MODEL,
            top_k=3,
            vectors=[search_pb2.QueryVector(values=unit(5)), search_pb2.QueryVector(values=unit(1))],
        ),
        timeout=30,
    )
    assert [r.hits[0].face.id for r in reply.results] == [upserted.ids[5], upserted.ids[1]]
    best = reply.results[0].hits[0]
    assert best.score == pytest.approx(1.0, abs=1e-4)
    assert best.face.payload.photo_id == "p2" and best.face.payload.tenant == "t1"
    assert best.face.payload.box.x_max == 110 and best.face.payload.quality.blur_variance == 321
    assert best.face.payload.model_id == "facenet-casia" and best.face.payload.indexed_at.seconds > 0
    assert dict(best.face.payload.metadata) == {"album": "summer"}
    assert reply.results[1].hits[0].face.payload.person_name == "Ann"

    filtered = search.Query(
        search_pb2.QueryRequest(
            tenant="t1",
            model=MODEL,
            top_k=10,
            vectors=[search_pb2.QueryVector(values=unit(9))],
            filter=search_pb2.FaceFilter(person_ids=["ann"]),
        ),
        timeout=30,
    )
    assert {h.face.payload.person_id for h in filtered.results[0].hits} == {"ann"}
    thresholded = search.Query(
        search_pb2.QueryRequest(
            tenant="t1", model=MODEL, top_k=10, score_threshold=0.9, vectors=[search_pb2.QueryVector(values=unit(9))]
        ),
        timeout=30,
    )
    assert [h.face.id for h in thresholded.results[0].hits] == [upserted.ids[9]]

    ids, token = [], ""
    while True:
        page = search.Scroll(
            search_pb2.ScrollRequest(tenant="t1", model=MODEL, page_size=4, page_token=token), timeout=30
        )
        ids += [f.id for f in page.faces]
        token = page.next_page_token
        if not token:
            break
    assert sorted(ids) == sorted(upserted.ids)

    photos = search.Count(search_pb2.CountRequest(tenant="t1", filter=search_pb2.FaceFilter(face_index=0)), timeout=30)
    assert photos.count == 5, "face 0 of each of the 5 photos"
    by_hash = search.Count(
        search_pb2.CountRequest(tenant="t1", filter=search_pb2.FaceFilter(photo_hashes=["sha-p1", "sha-p3"])),
        timeout=30,
    )
    assert by_hash.count == 4

    assert search.Count(search_pb2.CountRequest(tenant="t2"), timeout=30).count == 0
    assert search.Delete(search_pb2.DeleteRequest(tenant="t2", whole_tenant=True), timeout=30).deleted == 0
    assert search.Delete(search_pb2.DeleteRequest(tenant="t1", photo_id="p0"), timeout=30).deleted == 2
    assert search.Delete(search_pb2.DeleteRequest(tenant="t1", person_id="ann"), timeout=30).deleted == 2
    assert search.Count(search_pb2.CountRequest(tenant="t1", model_id="facenet-casia"), timeout=30).count == 6
    assert search.Delete(search_pb2.DeleteRequest(tenant="t1", whole_tenant=True), timeout=30).deleted == 6


def expect_invalid(call, words: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in caught.value.details()


def test_bad_requests_get_invalid_argument(search):
    good = face(1, "x")
    nan = search_pb2.FaceRecord(vector=[float("nan")] * 512, payload=good.payload)
    short = search_pb2.FaceRecord(vector=[0.1] * 10, payload=good.payload)
    other = common_pb2.EmbeddingModel(id="arcface-r100", dimension=512)
    for request, words in [
        (search_pb2.UpsertRequest(model=MODEL, faces=[good]), "tenant is required"),
        (search_pb2.UpsertRequest(tenant="t", model=MODEL, faces=[nan]), "NaN"),
        (search_pb2.UpsertRequest(tenant="t", model=MODEL, faces=[short]), "dimension 10"),
        (search_pb2.UpsertRequest(tenant="t", model=other, faces=[good]), "unknown model"),
        (search_pb2.UpsertRequest(tenant="t", model=MODEL, faces=[face(i, f"b{i}") for i in range(51)]), "limit of 50"),
        (search_pb2.UpsertRequest(tenant="t", model=MODEL), "no faces"),
    ]:
        expect_invalid(lambda request=request: search.Upsert(request, timeout=30), words)
    assert search.Count(search_pb2.CountRequest(tenant="t"), timeout=30).count == 0, "nothing partial was written"
    expect_invalid(
        lambda: search.Query(
            search_pb2.QueryRequest(model=MODEL, vectors=[search_pb2.QueryVector(values=unit(1))]), timeout=30
        ),
        "tenant",
    )
    expect_invalid(lambda: search.Delete(search_pb2.DeleteRequest(tenant="t"), timeout=30), "say what to delete")
    expect_invalid(
        lambda: search.Scroll(search_pb2.ScrollRequest(tenant="t", model=MODEL, page_token="zzz"), timeout=30),
        "page_token",
    )


def test_a_tenants_model_is_chosen_by_compare_and_set(search):
    model = common_pb2.EmbeddingModel(id="dlib-resnet", version="1", dimension=128)
    first = search.GetTenantModel(search_pb2.GetTenantModelRequest(tenant="chooser")).choice
    assert not first.HasField("model") and first.tenant == "chooser"
    chosen = search.SetTenantModel(search_pb2.SetTenantModelRequest(tenant="chooser", model=model)).choice
    assert chosen.model.id == "dlib-resnet" and chosen.previous_model_id == "" and chosen.changed_at.seconds > 0
    assert search.GetTenantModel(search_pb2.GetTenantModelRequest(tenant="chooser")).choice.model == model
    assert not search.GetTenantModel(search_pb2.GetTenantModelRequest(tenant="someone-else")).choice.HasField("model")
    with pytest.raises(grpc.RpcError) as stale:  # a second switch that read "none chosen" loses
        search.SetTenantModel(search_pb2.SetTenantModelRequest(tenant="chooser", model=model))
    assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    back = common_pb2.EmbeddingModel(id="facenet-casia", version="1", dimension=512)
    request = search_pb2.SetTenantModelRequest(tenant="chooser", model=back, expected_model_id="dlib-resnet")
    assert search.SetTenantModel(request).choice.previous_model_id == "dlib-resnet"
    for bad in (
        common_pb2.EmbeddingModel(id="unknown", dimension=3),
        common_pb2.EmbeddingModel(id="dlib-resnet", dimension=5),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            search.SetTenantModel(
                search_pb2.SetTenantModelRequest(tenant="chooser", model=bad, expected_model_id="facenet-casia")
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        search.GetTenantModel(search_pb2.GetTenantModelRequest(tenant=""))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
