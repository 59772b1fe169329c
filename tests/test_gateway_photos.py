"""What a photo is to the gateway, on loopback (the fake analyser of test_gateway_logic and the
real search service): its bytes as well as its id, so deleting it deletes every face stored
from those bytes; and a photo without a face is answered with the status docs/gateway.md gives."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from cli.exit_status import EXIT_OK
from cli.main import main as facesearch
from facesearch.v1 import facesearch_pb2
from sdk.client import FaceSearchClient
from tests.test_gateway_logic import (
    OTHER_TENANT,
    Gateway,
    SearchHooks,
    face,
    fake_photo,
    refused,
    start_gateway,
    start_search,
    statuses,
)

TENANT = "people"


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    search = start_search(SearchHooks())
    gateway = start_gateway(search.address)
    yield gateway
    gateway.server.stop()
    search.stop()


def cli(gateway: Gateway, tenant: str, *args: str) -> int:
    return facesearch([args[0], "--address", gateway.server.address, "--api-key", f"key-{tenant}", *args[1:]])


def test_deleting_a_photo_by_its_index_id_deletes_the_reference_enrolled_from_it(gateway, tmp_path, capsys) -> None:
    """`facesearch enroll` sends a photo without an id (its id is then its SHA-256), `facesearch
    index` with its path in the folder: the same bytes under two ids."""
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "002_A.jpg").write_bytes(fake_photo(face("ann"), note="002_A"))
    (archive / "003_B.jpg").write_bytes(fake_photo(face("bob"), note="003_B"))
    other = gateway.client(OTHER_TENANT)
    list(other.index([facesearch_pb2.Photo(id="002_A.jpg", content=(archive / "002_A.jpg").read_bytes())]))
    with gateway.client(TENANT) as client:
        enrolment_id = ""
        for by_enrolment_id in (False, True):  # delete by the index id; enrolled and indexed again, by the other
            assert cli(gateway, TENANT, "enroll", "Ann", str(archive / "002_A.jpg")) == EXIT_OK
            assert cli(gateway, TENANT, "index", str(archive)) == EXIT_OK
            capsys.readouterr()
            [ann] = client.list_people()
            assert ann.reference_faces == 1 and client.stats().faces == 2
            assert [m.photo_id for m in client.find_me(person_id=ann.person_id).matches] == ["002_A.jpg"]
            enrolment_id = (
                enrolment_id or client.enroll("", [archive / "002_A.jpg"], person_id=ann.person_id).results[0].photo_id
            )
            assert cli(gateway, TENANT, "delete-photo", enrolment_id if by_enrolment_id else "002_A.jpg") == EXIT_OK
            assert client.list_people() == [], "the person lost the reference face of those bytes"
            assert client.stats().faces == 1, "the gallery face of those bytes is gone, the other photo kept"
            error = refused(lambda person=ann.person_id: client.find_me(person_id=person))
            assert error.code == grpc.StatusCode.NOT_FOUND
    assert other.stats().faces == 1, "the same bytes in another tenant are not touched"
    other.close()


def test_a_photo_without_a_face_is_the_callers_mistake_except_in_enroll_and_index(gateway) -> None:
    good, faceless = fake_photo(face("cid"), note="faces"), fake_photo(note="no face")
    client: FaceSearchClient
    with gateway.client(TENANT) as client:
        enrolled = client.enroll("Cid", [good, faceless])
        assert statuses(enrolled.results) == ["ENROLLED", "NO_FACE"] and enrolled.reference_faces == 1
        assert statuses(client.index([faceless])) == ["NO_FACE"]
        for call, words in [
            (lambda: client.identify(faceless), "photo: no face found"),
            (lambda: client.find_me([good, faceless]), "reference 1: no face found"),
            (lambda: client.verify(good, faceless), "photo b: no face found"),
        ]:
            error = refused(call)
            assert (error.code, error.message) == (grpc.StatusCode.INVALID_ARGUMENT, words)
        client.delete_person(enrolled.person_id)
