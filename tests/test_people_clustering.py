"""Clustering and the people operations, in seconds: the gateway on loopback against the real
search service (qdrant-client's in-memory engine) and the fake analyser of
tests/test_gateway_logic.py, whose photos say which faces they hold.

Fake faces of one person are about 0.8 alike, of two people about 0; the gateway here
clusters at 0.65 with cores of 3 close faces."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from facesearch.v1 import facesearch_pb2
from sdk.client import FaceSearchClient
from tests.test_gateway_logic import (
    Gateway,
    SearchHooks,
    face,
    fake_photo,
    photo,
    refused,
    start_gateway,
    start_search,
    statuses,
)

CLUSTERING = {
    "cluster_thresholds": {"facenet-casia": 0.65},
    "cluster_min_neighbours": 3,
    "cluster_after_new_faces": 0,
}


@pytest.fixture(scope="module")
def search():
    server = start_search(SearchHooks())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(search) -> Iterator[Gateway]:
    started = start_gateway(search.address, **CLUSTERING)
    yield started
    started.server.stop()


def client_of(gateway: Gateway, tenant: str) -> FaceSearchClient:
    return gateway.client(tenant, timeout_s=30)


def run(client: FaceSearchClient, full: bool = False) -> facesearch_pb2.ClusteringStatus:
    client.start_clustering(full=full)
    status = client.wait_for_clustering(timeout_s=60)
    assert status.state == facesearch_pb2.CLUSTERING_STATE_DONE, status.error
    return status


def members(client: FaceSearchClient, **options) -> dict[str, set[str]]:
    """Cluster id -> "photo#face" of its faces."""
    return {
        c.cluster_id: {f"{f.photo_id}#{f.face_index}" for f in c.faces}
        for c in client.cluster_faces(faces_per_cluster=100, **options)
    }


def index(client: FaceSearchClient, photos: list[facesearch_pb2.Photo]) -> None:
    assert set(statuses(client.index(photos))) == {"INDEXED"}


def people_photos(person: str, variants: range) -> list[facesearch_pb2.Photo]:
    return [photo(fake_photo(face(person, variant=v)), f"{person}-{v}") for v in variants]


def test_clusters_grow_through_core_faces_only_and_keep_a_photos_faces_apart(gateway) -> None:
    client = client_of(gateway, "clusters")
    photos = people_photos("ann", range(4)) + people_photos("bob", range(4)) + people_photos("cid", range(3))
    # A stranger close to one photo of Ann and one of Bob (0.71 each): linking every close pair
    # would chain Ann and Bob into one cluster; with two close faces it is no core face.
    photos.append(photo(fake_photo(face("ann", variant=0, blend=("bob",))), "look-alike"))
    # Cid twice in one photo (a mirror): two faces of one photo are two people.
    photos.append(photo(fake_photo(face("cid", variant=7), face("cid", variant=8, x=200)), "mirror"))
    photos.append(photo(fake_photo(face("dan")), "dan"))
    photos.append(photo(fake_photo(face("ann", variant=9, size=10)), "ann-tiny"))  # below the quality bar
    index(client, photos)
    status = run(client)
    assert (status.faces_to_do, status.faces_done) == (len(photos) + 1, len(photos) + 1)
    clusters = members(client)
    by_person = {}
    for cluster_id, faces in clusters.items():
        people = {f.split("-")[0].split("#")[0] for f in faces if not f.startswith(("look-alike", "mirror"))}
        assert len(people) == 1, f"{cluster_id} mixes {sorted(faces)}"
        by_person[people.pop()] = faces
    assert {f"ann-{v}#0" for v in range(4)} <= by_person["ann"] and "ann-tiny#0" not in by_person["ann"]
    assert {f"bob-{v}#0" for v in range(4)} <= by_person["bob"]
    assert len([f for f in by_person["cid"] if f.startswith("mirror")]) == 1
    assert sum("look-alike#0" in faces for faces in clusters.values()) <= 1
    assert "dan" not in by_person, "one face is no cluster"
    assert status.clusters == len(clusters) == 3


def test_a_run_looks_only_at_new_faces_and_cluster_ids_last(gateway, search) -> None:
    client = client_of(gateway, "incremental")
    index(client, people_photos("eve", range(4)) + people_photos("fay", range(4)))
    run(client)
    before = members(client)
    assert len(before) == 2
    index(client, people_photos("eve", range(4, 6)) + people_photos("gus", range(4)))
    status = run(client)
    assert status.faces_to_do == 6, "only the faces indexed since the last run"
    after = members(client)
    eve = next(c for c, faces in before.items() if "eve-0#0" in faces)
    assert after[eve] == {f"eve-{v}#0" for v in range(6)}, "new faces join the cluster they belong to"
    assert set(before) < set(after) and len(after) == 3
    # Another gateway (a restart, a replica) lists the same stored clusters.
    other = start_gateway(search.address, **CLUSTERING)
    try:
        assert members(other.client("incremental")) == after
    finally:
        other.server.stop()
    # A full run keeps the ids of the clusters that survive it.
    status = run(client, full=True)
    assert status.faces_to_do == 14 and members(client) == after


def test_people_are_named_renamed_merged_hidden_and_told_apart(gateway) -> None:
    client = client_of(gateway, "people-ops")
    index(client, people_photos("hal", range(5)) + people_photos("ivy", range(4)))
    index(client, [photo(fake_photo(face("ivy", variant=9), face("hal", variant=9, x=300)), "together")])
    run(client)
    clusters = {c.cluster_id: c for c in client.cluster_faces(faces_per_cluster=100)}
    hal_cluster = next(c for c in clusters.values() if any(f.photo_id == "hal-0" for f in c.faces))
    ivy_cluster = next(c for c in clusters.values() if any(f.photo_id == "ivy-0" for f in c.faces))

    hal = client.name_cluster(hal_cluster.cluster_id, "Hal")
    assert (hal.display_name, hal.archive_faces) == ("Hal", hal_cluster.face_count)
    assert hal.reference_faces == hal_cluster.face_count and hal.representative.face_id
    assert client.cluster_faces() == [c for c in client.cluster_faces() if not c.person_id], "named ones left out"
    named = client.cluster_faces(include_named=True)
    assert {c.display_name for c in named} == {"Hal", ""}
    found = {m.photo_id for m in client.find_me_all(person_id=hal.person_id)}
    assert found == {f"hal-{v}" for v in range(5)} | {"together"}

    # Not this person: one of Hal's faces is someone else.
    wrong = next(f for f in client.person_faces(hal.person_id) if f.photo_id == "hal-4" and not f.reference)
    client.reject_face(wrong.face_id, hal.person_id)
    assert "hal-4" not in {m.photo_id for m in client.find_me_all(person_id=hal.person_id, threshold=0.5)}
    assert "hal-4" not in {f.photo_id for f in client.person_faces(hal.person_id)}
    run(client, full=True)  # the mark survives a re-cluster
    hal_now = next(c for c in client.cluster_faces(include_named=True) if c.person_id == hal.person_id)
    assert "hal-4" not in {f.photo_id for f in hal_now.faces}
    assert "hal-4" not in {m.photo_id for m in client.find_me_all(person_id=hal.person_id, threshold=0.5)}
    # ... and moving it back is the person's word against the mark.
    client.assign_face(wrong.face_id, hal.person_id)
    assert "hal-4" in {f.photo_id for f in client.person_faces(hal.person_id)}

    # Ivy: named, renamed, merged into a second name of hers, hidden.
    ivy = client.name_cluster(ivy_cluster.cluster_id, "Ivy")
    assert client.rename_person(ivy.person_id, "Ivy Lee").display_name == "Ivy Lee"
    alias = client.enroll("Ivy (work)", [fake_photo(face("ivy", variant=20))])
    merged = client.merge_people(ivy.person_id, [alias.person_id])
    assert merged.reference_faces == ivy.reference_faces + 1
    assert alias.person_id not in {p.person_id for p in client.list_people()}
    client.hide_person(ivy.person_id)
    assert ivy.person_id not in {p.person_id for p in client.list_people()}
    assert ivy.person_id in {p.person_id for p in client.list_people(include_hidden=True)}

    # Both of them, in one photo or in any.
    both = client.find_people([hal.person_id, ivy.person_id], match_all=True).matches
    assert [(m.photo_id, sorted(m.person_ids)) for m in both] == [("together", sorted([hal.person_id, ivy.person_id]))]
    either = {m.photo_id for m in client.find_people([hal.person_id, ivy.person_id], limit=100).matches}
    assert either >= {"hal-0", "ivy-0", "together"}

    # Detaching a face; deleting a person removes their references and assignments, not photos.
    hal_1 = next(f for f in client.person_faces(hal.person_id) if f.photo_id == "hal-1" and not f.reference)
    detached = client.assign_face(hal_1.face_id)
    assert detached.person_id == "" and "hal-1" not in {f.photo_id for f in client.person_faces(hal.person_id)}
    photos_before = client.stats().photos
    references = client.list_people(include_hidden=True)
    deleted = client.delete_person(hal.person_id)
    assert deleted == next(p.reference_faces for p in references if p.person_id == hal.person_id)
    assert client.stats().photos == photos_before
    assert refused(lambda: client.person_faces(hal.person_id)).code == grpc.StatusCode.NOT_FOUND
    assert not any(c.person_id == hal.person_id for c in client.cluster_faces(include_named=True))


def test_people_operations_refuse_unknown_ids_and_other_tenants(gateway) -> None:
    client = client_of(gateway, "find-people")
    index(client, people_photos("jo", range(4)))
    run(client)
    [cluster] = client.cluster_faces()
    person = client.name_cluster(cluster.cluster_id, "Jo")
    stranger = client_of(gateway, "other")
    for call in (
        lambda: stranger.name_cluster(cluster.cluster_id, "Jo"),
        lambda: stranger.rename_person(person.person_id, "X"),
        lambda: stranger.person_faces(person.person_id),
        lambda: stranger.reject_face(cluster.faces[0].face_id, person.person_id),
        lambda: client.merge_people(person.person_id, ["nobody"]),
        lambda: client.name_cluster("c-none", "X"),
    ):
        assert refused(call).code == grpc.StatusCode.NOT_FOUND
    for call in (
        lambda: client.assign_face("not-a-uuid", person.person_id),
        lambda: client.name_cluster(cluster.cluster_id),
        lambda: client.rename_person(person.person_id, ""),
    ):
        assert refused(call).code == grpc.StatusCode.INVALID_ARGUMENT
    assert client.rename_person(person.person_id, "Jo") == client.rename_person(person.person_id, "Jo"), "idempotent"


def test_a_run_starts_by_itself_once_enough_faces_were_indexed(search) -> None:
    eager = start_gateway(search.address, **{**CLUSTERING, "cluster_after_new_faces": 5})
    try:
        client = eager.client("retry")
        index(client, people_photos("kim", range(4)))
        assert client.clustering_status().state == facesearch_pb2.CLUSTERING_STATE_UNSPECIFIED, "4 faces: not yet"
        index(client, people_photos("kim", range(4, 6)))
        status = client.wait_for_clustering(timeout_s=60)
        assert status.state == facesearch_pb2.CLUSTERING_STATE_DONE and status.faces_to_do == 6
        assert [c.face_count for c in client.cluster_faces()] == [6]
    finally:
        eager.server.stop()


def test_faces_settled_alone_become_core_when_new_close_faces_arrive(gateway) -> None:
    """A face a run left out of any cluster (too few close faces then) is looked at again when
    later faces are close to it, and the cluster grows through it."""
    client = client_of(gateway, "revisit")
    index(client, people_photos("rita", range(2)))
    run(client)
    assert members(client) == {}, "two photos: neither face has enough close faces"
    index(client, people_photos("rita", range(2, 5)))
    run(client)
    assert list(members(client).values()) == [{f"rita-{v}#0" for v in range(5)}]


def test_a_not_this_person_mark_follows_a_merge(gateway) -> None:
    """A face said not to be a person stays apart from the person they are merged into."""
    client = client_of(gateway, "merge-marks")
    index(client, people_photos("jo", range(4)))
    run(client)
    [jo_cluster] = client.cluster_faces(faces_per_cluster=100)
    jo = client.name_cluster(jo_cluster.cluster_id, "Jo")
    alias = client.enroll("Jo (school)", [fake_photo(face("jo", variant=30))])
    wrong = next(f for f in client.person_faces(jo.person_id) if f.photo_id == "jo-3" and not f.reference)
    client.assign_face(wrong.face_id, alias.person_id)
    client.reject_face(wrong.face_id, alias.person_id)  # not Jo (school) after all
    client.merge_people(jo.person_id, [alias.person_id])
    assert "jo-3" not in {m.photo_id for m in client.find_me_all(person_id=jo.person_id, threshold=0.5)}
    run(client, full=True)
    jo_now = next(c for c in client.cluster_faces(include_named=True) if c.person_id == jo.person_id)
    assert "jo-3" not in {f.photo_id for f in jo_now.faces}, "the mark keeps it out of the merged person's cluster"
