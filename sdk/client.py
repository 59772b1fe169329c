"""A small typed client for apps: ``FaceSearchClient`` (blocking) and
``AsyncFaceSearchClient`` (asyncio), with the same methods.

    with FaceSearchClient("127.0.0.1:50050", api_key) as client:
        client.enroll("Ada", [Path("ada.jpg")])
        for match in client.find_me_all(person_id=...):
            print(match.photo_uri, match.similarity)

Photos are given as a path, bytes, or a ``facesearch_pb2.Photo``; answers are the
API's messages. Failures raise ``FaceSearchError`` with the gRPC status code.

A call the gateway refuses because it is at capacity (RESOURCE_EXHAUSTED) is tried
again by gRPC itself, up to ``retries`` times, after the delay the gateway asks for
(``grpc-retry-pushback-ms``; else a jittered backoff from 0.2 s, doubling), never past
the call's timeout. TLS: give ``root_certificates`` (PEM bytes of the CA that signed the
gateway's certificate), or ``credentials`` for anything else (a client certificate).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path

import grpc

from facesearch.v1 import facesearch_pb2, facesearch_pb2_grpc
from services.runtime.channels import MAX_ATTEMPTS, RetryPolicy

PhotoLike = str | Path | bytes | facesearch_pb2.Photo
SERVICE = facesearch_pb2.DESCRIPTOR.services_by_name["FaceSearch"].full_name
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# gRPC retries only calls whose requests it kept, up to this size per call (256 KiB by default).
RETRY_BUFFER_BYTES = 64 * 1024 * 1024
DEFAULT_RETRIES = MAX_ATTEMPTS - 1
RETRY_BACKOFF_S, MAX_RETRY_BACKOFF_S = 0.2, 2.0


def channel_options(retries: int = DEFAULT_RETRIES) -> list[tuple[str, object]]:
    """The options of a channel to the gateway: message sizes, and ``retries`` retries of a
    call refused with RESOURCE_EXHAUSTED (0: none)."""
    policy = RetryPolicy(retries + 1, RETRY_BACKOFF_S, MAX_RETRY_BACKOFF_S, codes=("RESOURCE_EXHAUSTED",))
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 1 if retries else 0),
        ("grpc.service_config", policy.service_config([SERVICE])),
        ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES),
    ]


class _Client:
    """The channel, stub and key both clients hold; ``_channels`` is ``grpc`` or ``grpc.aio``."""

    _channels = grpc

    def __init__(
        self,
        address: str,
        api_key: str,
        *,
        timeout_s: float = 120.0,
        retries: int = DEFAULT_RETRIES,
        root_certificates: bytes | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        options = channel_options(retries)
        if credentials is None and root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        self._channel = (
            self._channels.insecure_channel(address, options=options)
            if credentials is None
            else self._channels.secure_channel(address, credentials, options=options)
        )
        self._stub = facesearch_pb2_grpc.FaceSearchStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self.timeout_s = timeout_s


class FaceSearchError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def as_photo(photo: PhotoLike, photo_id: str = "") -> facesearch_pb2.Photo:
    """A Photo message from a path (its URI is the path), bytes or a Photo."""
    if isinstance(photo, facesearch_pb2.Photo):
        return photo
    if isinstance(photo, bytes):
        return facesearch_pb2.Photo(id=photo_id, content=photo)
    path = Path(photo)
    return facesearch_pb2.Photo(id=photo_id, uri=str(path), content=path.read_bytes())


def _error(error: grpc.RpcError) -> FaceSearchError:
    return FaceSearchError(error.code(), error.details() or "")


class _Requests:
    """The request messages, shared by both clients."""

    @staticmethod
    def enroll(photos, person_id, display_name) -> facesearch_pb2.EnrollRequest:
        return facesearch_pb2.EnrollRequest(
            person_id=person_id, display_name=display_name, photos=[as_photo(p) for p in photos]
        )

    @staticmethod
    def verify(a, b, threshold) -> facesearch_pb2.VerifyRequest:
        return facesearch_pb2.VerifyRequest(a=as_photo(a), b=as_photo(b), similarity_threshold=threshold)

    @staticmethod
    def identify(photo, top_k, threshold) -> facesearch_pb2.IdentifyRequest:
        return facesearch_pb2.IdentifyRequest(photo=as_photo(photo), top_k=top_k, similarity_threshold=threshold)

    @staticmethod
    def find_me(references, person_id, threshold, limit, page_token) -> facesearch_pb2.FindMeRequest:
        return facesearch_pb2.FindMeRequest(
            references=[as_photo(p) for p in references],
            person_id=person_id,
            similarity_threshold=threshold,
            limit=limit,
            page_token=page_token,
        )


class _PeopleRequests:
    """The requests of the people and clustering calls, for both clients."""

    @staticmethod
    def find_people(person_ids, match_all, threshold, limit, page_token) -> facesearch_pb2.FindMeRequest:
        return facesearch_pb2.FindMeRequest(
            person_ids=list(person_ids),
            people_match=facesearch_pb2.PEOPLE_MATCH_ALL if match_all else facesearch_pb2.PEOPLE_MATCH_ANY,
            similarity_threshold=threshold,
            limit=limit,
            page_token=page_token,
        )

    @staticmethod
    def clusters(min_cluster_size, include_named, faces_per_cluster, page_token) -> facesearch_pb2.ClusterFacesRequest:
        return facesearch_pb2.ClusterFacesRequest(
            min_cluster_size=min_cluster_size,
            include_named=include_named,
            faces_per_cluster=faces_per_cluster,
            page_token=page_token,
        )


class FaceSearchClient(_Client):
    _channels = grpc

    def _call(self, method, request):
        try:
            return method(request, metadata=self._metadata, timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise _error(error) from None

    def enroll(
        self, display_name: str, photos: Iterable[PhotoLike], *, person_id: str = ""
    ) -> facesearch_pb2.EnrollResponse:
        return self._call(self._stub.Enroll, _Requests.enroll(photos, person_id, display_name))

    def index(
        self, photos: Iterable[PhotoLike], *, timeout_s: float | None = None
    ) -> Iterator[facesearch_pb2.PhotoResult]:
        """Indexes the photos as one stream; yields one result per photo as they come."""
        requests = (facesearch_pb2.IndexPhotosRequest(photo=as_photo(p)) for p in photos)
        try:
            for reply in self._stub.IndexPhotos(requests, metadata=self._metadata, timeout=timeout_s):
                yield reply.result
        except grpc.RpcError as error:
            raise _error(error) from None

    def verify(self, a: PhotoLike, b: PhotoLike, *, threshold: float | None = None) -> facesearch_pb2.VerifyResponse:
        return self._call(self._stub.Verify, _Requests.verify(a, b, threshold))

    def identify(
        self, photo: PhotoLike, *, top_k: int = 3, threshold: float | None = None
    ) -> facesearch_pb2.IdentifyResponse:
        return self._call(self._stub.Identify, _Requests.identify(photo, top_k, threshold))

    def find_me(
        self,
        references: Iterable[PhotoLike] = (),
        *,
        person_id: str = "",
        threshold: float | None = None,
        limit: int = 50,
        page_token: str = "",
    ) -> facesearch_pb2.FindMeResponse:
        return self._call(self._stub.FindMe, _Requests.find_me(references, person_id, threshold, limit, page_token))

    def find_me_all(
        self,
        references: Iterable[PhotoLike] = (),
        *,
        person_id: str = "",
        threshold: float | None = None,
        page_size: int = 100,
    ) -> Iterator[facesearch_pb2.PhotoMatch]:
        """Every match, page after page, best first."""
        references = [as_photo(p) for p in references]
        token = ""
        while True:
            reply = self.find_me(
                references, person_id=person_id, threshold=threshold, limit=page_size, page_token=token
            )
            yield from reply.matches
            token = reply.next_page_token
            if not token:
                return

    def delete_person(self, person_id: str) -> int:
        return self._call(
            self._stub.DeletePerson, facesearch_pb2.DeletePersonRequest(person_id=person_id)
        ).faces_deleted

    def delete_photo(self, photo_id: str) -> int:
        return self._call(self._stub.DeletePhoto, facesearch_pb2.DeletePhotoRequest(photo_id=photo_id)).faces_deleted

    def list_people(self, *, include_hidden: bool = False) -> list[facesearch_pb2.Person]:
        people, token = [], ""
        while True:
            request = facesearch_pb2.ListPeopleRequest(page_token=token, include_hidden=include_hidden)
            reply = self._call(self._stub.ListPeople, request)
            people += reply.people
            token = reply.next_page_token
            if not token:
                return people

    def find_people(
        self,
        person_ids: Iterable[str],
        *,
        match_all: bool = False,
        threshold: float | None = None,
        limit: int = 50,
        page_token: str = "",
    ) -> facesearch_pb2.FindMeResponse:
        """The photos with any (``match_all``: all) of these enrolled people."""
        request = _PeopleRequests.find_people(person_ids, match_all, threshold, limit, page_token)
        return self._call(self._stub.FindMe, request)

    def cluster_faces(
        self, *, min_cluster_size: int = 2, include_named: bool = False, faces_per_cluster: int = 12
    ) -> list[facesearch_pb2.FaceCluster]:
        """Every stored cluster (all pages), largest first."""
        clusters, token = [], ""
        while True:
            request = _PeopleRequests.clusters(min_cluster_size, include_named, faces_per_cluster, token)
            reply = self._call(self._stub.ClusterFaces, request)
            clusters += reply.clusters
            token = reply.next_page_token
            if not token:
                return clusters

    def start_clustering(self, *, full: bool = False) -> facesearch_pb2.ClusteringStatus:
        request = facesearch_pb2.StartClusteringRequest(full=full)
        return self._call(self._stub.StartClustering, request).status

    def clustering_status(self) -> facesearch_pb2.ClusteringStatus:
        return self._call(self._stub.GetClusteringStatus, facesearch_pb2.GetClusteringStatusRequest()).status

    def wait_for_clustering(self, *, timeout_s: float = 600.0, poll_s: float = 0.2) -> facesearch_pb2.ClusteringStatus:
        """The status once the current run is over (TimeoutError after ``timeout_s``)."""
        end = time.monotonic() + timeout_s
        while (status := self.clustering_status()).state == facesearch_pb2.CLUSTERING_STATE_RUNNING:
            if time.monotonic() > end:
                raise TimeoutError(f"clustering still running after {timeout_s} s")
            time.sleep(poll_s)
        return status

    def name_cluster(self, cluster_id: str, display_name: str = "", *, person_id: str = "") -> facesearch_pb2.Person:
        request = facesearch_pb2.NameClusterRequest(
            cluster_id=cluster_id, person_id=person_id, display_name=display_name
        )
        return self._call(self._stub.NameCluster, request).person

    def rename_person(self, person_id: str, display_name: str) -> facesearch_pb2.Person:
        request = facesearch_pb2.RenamePersonRequest(person_id=person_id, display_name=display_name)
        return self._call(self._stub.RenamePerson, request).person

    def merge_people(self, person_id: str, merged_person_ids: Iterable[str]) -> facesearch_pb2.Person:
        request = facesearch_pb2.MergePeopleRequest(person_id=person_id, merged_person_ids=list(merged_person_ids))
        return self._call(self._stub.MergePeople, request).person

    def assign_face(self, face_id: str, person_id: str = "") -> facesearch_pb2.AssignFaceResponse:
        """Moves a face of the archive to the person; without one, detaches it."""
        return self._call(self._stub.AssignFace, facesearch_pb2.AssignFaceRequest(face_id=face_id, person_id=person_id))

    def reject_face(self, face_id: str, person_id: str) -> facesearch_pb2.FaceRef:
        """Not this person."""
        request = facesearch_pb2.RejectFaceRequest(face_id=face_id, person_id=person_id)
        return self._call(self._stub.RejectFace, request).face

    def hide_person(self, person_id: str, hidden: bool = True) -> facesearch_pb2.Person:
        request = facesearch_pb2.HidePersonRequest(person_id=person_id, hidden=hidden)
        return self._call(self._stub.HidePerson, request).person

    def person_faces(self, person_id: str) -> list[facesearch_pb2.FaceRef]:
        """Every face of the person (all pages), the best first."""
        faces, token = [], ""
        while True:
            request = facesearch_pb2.ListPersonFacesRequest(person_id=person_id, page_token=token)
            reply = self._call(self._stub.ListPersonFaces, request)
            faces += reply.faces
            token = reply.next_page_token
            if not token:
                return faces

    # --- moving the tenant's faces to another embedding model --------------------------------

    def list_models(self) -> list[facesearch_pb2.TenantModelCollection]:
        return list(self._call(self._stub.ListModels, facesearch_pb2.ListModelsRequest()).models)

    def migration_photos(
        self, to_model_id: str, *, from_model_id: str = "", page_size: int = 0
    ) -> Iterator[facesearch_pb2.MigrationPhoto]:
        """The photos whose faces are not yet in ``to_model_id``'s collection, page by page."""
        token = ""
        while True:
            request = facesearch_pb2.ListMigrationPhotosRequest(
                to_model_id=to_model_id, from_model_id=from_model_id, page_size=page_size, page_token=token
            )
            reply = self._call(self._stub.ListMigrationPhotos, request)
            yield from reply.photos
            token = reply.next_page_token
            if not token:
                return

    def migrate_photos(
        self, to_model_id: str, photos: Iterable[PhotoLike], *, from_model_id: str = ""
    ) -> list[facesearch_pb2.MigratedPhoto]:
        request = facesearch_pb2.MigratePhotosRequest(
            to_model_id=to_model_id, from_model_id=from_model_id, photos=[as_photo(p) for p in photos]
        )
        return list(self._call(self._stub.MigratePhotos, request).results)

    def switch_model(
        self, to_model_id: str, *, from_model_id: str = "", allow_missing: bool = False
    ) -> facesearch_pb2.SwitchModelResponse:
        request = facesearch_pb2.SwitchModelRequest(
            to_model_id=to_model_id, from_model_id=from_model_id, allow_missing=allow_missing
        )
        return self._call(self._stub.SwitchModel, request)

    def drop_model(self, model_id: str) -> int:
        """Deletes the tenant's faces of a model it no longer uses; how many there were."""
        return self._call(self._stub.DropModel, facesearch_pb2.DropModelRequest(model_id=model_id)).faces_deleted

    def stats(self) -> facesearch_pb2.StatsResponse:
        """The tenant's counts, match settings and indexing progress (``indexing``: the
        IndexPhotos streams as the gateway replica that answers serves them)."""
        return self._call(self._stub.Stats, facesearch_pb2.StatsRequest())

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> FaceSearchClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncFaceSearchClient(_Client):
    """The same methods as FaceSearchClient, as coroutines (``index`` is an async iterator)."""

    _channels = grpc.aio

    async def _call(self, method, request):
        try:
            return await method(request, metadata=self._metadata, timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise _error(error) from None

    async def enroll(
        self, display_name: str, photos: Iterable[PhotoLike], *, person_id: str = ""
    ) -> facesearch_pb2.EnrollResponse:
        return await self._call(self._stub.Enroll, _Requests.enroll(photos, person_id, display_name))

    async def index(
        self, photos: Iterable[PhotoLike] | AsyncIterable[PhotoLike], *, timeout_s: float | None = None
    ) -> AsyncIterator[facesearch_pb2.PhotoResult]:
        async def requests():
            if isinstance(photos, AsyncIterable):
                async for photo in photos:
                    yield facesearch_pb2.IndexPhotosRequest(photo=as_photo(photo))
            else:
                for photo in photos:
                    yield facesearch_pb2.IndexPhotosRequest(photo=as_photo(photo))

        try:
            async for reply in self._stub.IndexPhotos(requests(), metadata=self._metadata, timeout=timeout_s):
                yield reply.result
        except grpc.RpcError as error:
            raise _error(error) from None

    async def verify(
        self, a: PhotoLike, b: PhotoLike, *, threshold: float | None = None
    ) -> facesearch_pb2.VerifyResponse:
        return await self._call(self._stub.Verify, _Requests.verify(a, b, threshold))

    async def identify(
        self, photo: PhotoLike, *, top_k: int = 3, threshold: float | None = None
    ) -> facesearch_pb2.IdentifyResponse:
        return await self._call(self._stub.Identify, _Requests.identify(photo, top_k, threshold))

    async def find_me(
        self,
        references: Iterable[PhotoLike] = (),
        *,
        person_id: str = "",
        threshold: float | None = None,
        limit: int = 50,
        page_token: str = "",
    ) -> facesearch_pb2.FindMeResponse:
        request = _Requests.find_me(references, person_id, threshold, limit, page_token)
        return await self._call(self._stub.FindMe, request)

    async def find_me_all(
        self,
        references: Iterable[PhotoLike] = (),
        *,
        person_id: str = "",
        threshold: float | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[facesearch_pb2.PhotoMatch]:
        references = [as_photo(p) for p in references]
        token = ""
        while True:
            reply = await self.find_me(
                references, person_id=person_id, threshold=threshold, limit=page_size, page_token=token
            )
            for match in reply.matches:
                yield match
            token = reply.next_page_token
            if not token:
                return

    async def list_people(self) -> list[facesearch_pb2.Person]:
        people, token = [], ""
        while True:
            reply = await self._call(self._stub.ListPeople, facesearch_pb2.ListPeopleRequest(page_token=token))
            people += reply.people
            token = reply.next_page_token
            if not token:
                return people

    async def find_people(
        self,
        person_ids: Iterable[str],
        *,
        match_all: bool = False,
        threshold: float | None = None,
        limit: int = 50,
        page_token: str = "",
    ) -> facesearch_pb2.FindMeResponse:
        request = _PeopleRequests.find_people(person_ids, match_all, threshold, limit, page_token)
        return await self._call(self._stub.FindMe, request)

    async def cluster_faces(
        self, *, min_cluster_size: int = 2, include_named: bool = False, faces_per_cluster: int = 12
    ) -> list[facesearch_pb2.FaceCluster]:
        clusters, token = [], ""
        while True:
            request = _PeopleRequests.clusters(min_cluster_size, include_named, faces_per_cluster, token)
            reply = await self._call(self._stub.ClusterFaces, request)
            clusters += reply.clusters
            token = reply.next_page_token
            if not token:
                return clusters

    async def start_clustering(self, *, full: bool = False) -> facesearch_pb2.ClusteringStatus:
        request = facesearch_pb2.StartClusteringRequest(full=full)
        return (await self._call(self._stub.StartClustering, request)).status

    async def clustering_status(self) -> facesearch_pb2.ClusteringStatus:
        request = facesearch_pb2.GetClusteringStatusRequest()
        return (await self._call(self._stub.GetClusteringStatus, request)).status

    async def delete_person(self, person_id: str) -> int:
        request = facesearch_pb2.DeletePersonRequest(person_id=person_id)
        return (await self._call(self._stub.DeletePerson, request)).faces_deleted

    async def delete_photo(self, photo_id: str) -> int:
        request = facesearch_pb2.DeletePhotoRequest(photo_id=photo_id)
        return (await self._call(self._stub.DeletePhoto, request)).faces_deleted

    async def stats(self) -> facesearch_pb2.StatsResponse:
        """As ``FaceSearchClient.stats``."""
        return await self._call(self._stub.Stats, facesearch_pb2.StatsRequest())

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncFaceSearchClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
