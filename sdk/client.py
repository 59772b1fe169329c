"""A small typed client for apps: ``FaceSearchClient`` (blocking) and
``AsyncFaceSearchClient`` (asyncio), with the same methods.

    with FaceSearchClient("127.0.0.1:50050", api_key) as client:
        client.enroll("Ada", [Path("ada.jpg")])
        for match in client.find_me_all(person_id=...):
            print(match.photo_uri, match.similarity)

Photos are given as a path, bytes, or a ``facesearch_pb2.Photo``; answers are the
API's messages. Failures raise ``FaceSearchError`` with the gRPC status code.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path

import grpc

from facesearch.v1 import facesearch_pb2, facesearch_pb2_grpc

PhotoLike = str | Path | bytes | facesearch_pb2.Photo
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


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


class FaceSearchClient:
    def __init__(self, address: str, api_key: str, *, timeout_s: float = 120.0) -> None:
        self._channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
        self._stub = facesearch_pb2_grpc.FaceSearchStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self.timeout_s = timeout_s

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

    def list_people(self) -> list[facesearch_pb2.Person]:
        people, token = [], ""
        while True:
            reply = self._call(self._stub.ListPeople, facesearch_pb2.ListPeopleRequest(page_token=token))
            people += reply.people
            token = reply.next_page_token
            if not token:
                return people

    def cluster_faces(
        self, *, threshold: float | None = None, min_cluster_size: int = 2
    ) -> list[facesearch_pb2.FaceCluster]:
        request = facesearch_pb2.ClusterFacesRequest(similarity_threshold=threshold, min_cluster_size=min_cluster_size)
        return list(self._call(self._stub.ClusterFaces, request).clusters)

    def stats(self) -> facesearch_pb2.StatsResponse:
        return self._call(self._stub.Stats, facesearch_pb2.StatsRequest())

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> FaceSearchClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncFaceSearchClient:
    """The same methods as FaceSearchClient, as coroutines (``index`` is an async iterator)."""

    def __init__(self, address: str, api_key: str, *, timeout_s: float = 120.0) -> None:
        self._channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
        self._stub = facesearch_pb2_grpc.FaceSearchStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self.timeout_s = timeout_s

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

    async def cluster_faces(
        self, *, threshold: float | None = None, min_cluster_size: int = 2
    ) -> list[facesearch_pb2.FaceCluster]:
        request = facesearch_pb2.ClusterFacesRequest(similarity_threshold=threshold, min_cluster_size=min_cluster_size)
        return list((await self._call(self._stub.ClusterFaces, request)).clusters)

    async def delete_person(self, person_id: str) -> int:
        request = facesearch_pb2.DeletePersonRequest(person_id=person_id)
        return (await self._call(self._stub.DeletePerson, request)).faces_deleted

    async def delete_photo(self, photo_id: str) -> int:
        request = facesearch_pb2.DeletePhotoRequest(photo_id=photo_id)
        return (await self._call(self._stub.DeletePhoto, request)).faces_deleted

    async def stats(self) -> facesearch_pb2.StatsResponse:
        return await self._call(self._stub.Stats, facesearch_pb2.StatsRequest())

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncFaceSearchClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
