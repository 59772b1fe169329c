"""The FaceSearch gRPC API: authentication, proto conversion and status codes around
the gateway's operations, nothing else."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc

from facesearch.v1 import facesearch_pb2, facesearch_pb2_grpc
from gateway.auth import ApiKeys, AuthError, Caller
from gateway.clusters import face_ref
from gateway.dependencies import optional_threshold, photo_input
from gateway.errors import GatewayError
from gateway.migration import Migration
from gateway.operations import Operations
from gateway.progress import IndexingProgress
from gateway.tenant_models import TenantModels
from services.runtime.deadlines import Deadline


def _abort_code(error: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, AuthError):
        return (grpc.StatusCode.PERMISSION_DENIED if error.permission else grpc.StatusCode.UNAUTHENTICATED), str(error)
    if isinstance(error, GatewayError):
        return error.code, error.message
    if isinstance(error, TimeoutError):  # DeadlineExceeded, or the request's own time ran out
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(error) or "deadline exceeded: the request's time ran out"
    raise error


def rpc(scope: str) -> Callable:
    """Authenticates the caller (with ``scope``), admits the call (gateway/admission.py),
    passes the caller and the call's deadline to the method, and turns the gateway's errors
    into gRPC statuses. A unary call is answered DEADLINE_EXCEEDED when its deadline passes,
    whatever it is waiting for; a stream's deadlines are the method's (IndexPhotos gives
    each batch its own)."""

    def decorate(method: Callable) -> Callable:
        if inspect.isasyncgenfunction(method):

            @functools.wraps(method)
            async def stream(self: FaceSearchService, request, context):
                try:
                    caller = self.caller(context, scope)
                    async with self.admission.admit(0, context), self.admission.stream() as held:
                        async for reply in method(self, held.read(request), context, caller, self.deadline(context)):
                            held.answered()
                            yield reply
                except (AuthError, GatewayError, TimeoutError) as error:
                    await context.abort(*_abort_code(error))

            return stream

        @functools.wraps(method)
        async def unary(self: FaceSearchService, request, context):
            try:
                caller = self.caller(context, scope)
                deadline = self.deadline(context)
                async with self.admission.admit(request.ByteSize(), context), asyncio.timeout(deadline.remaining()):
                    return await method(self, request, context, caller, deadline)
            except (AuthError, GatewayError, TimeoutError) as error:
                await context.abort(*_abort_code(error))

        return unary

    return decorate


class FaceSearchService(facesearch_pb2_grpc.FaceSearchServicer):
    """Each call runs the operations of the embedding model its tenant uses
    (gateway/operations.py); edits of a tenant's people wait while its model is switched."""

    def __init__(
        self,
        operations: dict[str, Operations],
        tenant_models: TenantModels,
        keys: ApiKeys,
        progress: IndexingProgress,
    ) -> None:
        self.operations = operations
        self.tenant_models = tenant_models
        self.keys = keys
        self.progress = progress
        self.settings = operations[tenant_models.default_model_id].deps.settings
        self.admission = self.settings.admission()
        self.migration = Migration(operations, tenant_models)

    def caller(self, context: grpc.aio.ServicerContext, scope: str) -> Caller:
        caller = self.keys.authenticate(context.invocation_metadata())
        caller.require(scope)
        return caller

    def deadline(self, context: grpc.aio.ServicerContext) -> Deadline:
        """What is left of the caller's deadline, at most ``request_timeout_s``."""
        return Deadline.of_call(context, self.settings.request_timeout_s)

    async def ops(self, tenant: str, deadline: Deadline) -> Operations:
        """The operations of the model the tenant's faces are in use in."""
        model_id = await self.tenant_models.in_use(tenant, deadline)
        try:
            return self.operations[model_id]
        except KeyError:
            raise GatewayError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the tenant's faces are in {model_id}, which this gateway does not embed with: "
                "give it the model's Triton address in embedder_urls",
            ) from None

    @asynccontextmanager
    async def editing(self, tenant: str, deadline: Deadline) -> AsyncIterator[Operations]:
        """The tenant's operations, for a call that changes what is stored about its people."""
        async with self.migration.gate.editing(tenant):
            yield await self.ops(tenant, deadline)

    @rpc("write")
    async def Enroll(self, request, context, caller, deadline) -> facesearch_pb2.EnrollResponse:
        photos = [photo_input(p) for p in request.photos]
        async with self.editing(caller.tenant, deadline) as ops:
            person_id, results, count = await ops.people.enroll(
                caller.tenant, request.person_id, request.display_name, photos, deadline
            )
        return facesearch_pb2.EnrollResponse(
            person_id=person_id,
            results=results,
            reference_faces=count,
            settings=ops.deps.match_settings(ops.deps.threshold()),
        )

    @rpc("write")
    async def IndexPhotos(
        self, requests, context, caller, deadline
    ) -> AsyncIterator[facesearch_pb2.IndexPhotosResponse]:
        async def photos():
            async for request in requests:
                yield photo_input(request.photo)

        # A stream keeps the model its tenant used when it opened (`facesearch migrate` moves
        # what it stored after a switch).
        ops = await self.ops(caller.tenant, deadline)
        async for result in ops.indexer.index_stream(caller.tenant, photos(), lambda: self.deadline(context)):
            ops.clusters.faces_indexed(caller.tenant, result.faces_stored)
            yield facesearch_pb2.IndexPhotosResponse(result=result)

    @rpc("read")
    async def Verify(self, request, context, caller, deadline) -> facesearch_pb2.VerifyResponse:
        ops = await self.ops(caller.tenant, deadline)
        threshold = ops.deps.threshold(optional_threshold(request))
        verdict = await ops.matcher.verify(photo_input(request.a), photo_input(request.b), threshold, deadline)
        return facesearch_pb2.VerifyResponse(
            same_person=verdict.same_person,
            similarity=verdict.similarity,
            distance=verdict.distance,
            settings=ops.deps.match_settings(threshold),
            face_a=verdict.face_a,
            face_b=verdict.face_b,
        )

    @rpc("read")
    async def Identify(self, request, context, caller, deadline) -> facesearch_pb2.IdentifyResponse:
        ops = await self.ops(caller.tenant, deadline)
        threshold = ops.deps.threshold(optional_threshold(request))
        faces = await ops.matcher.identify(
            caller.tenant, photo_input(request.photo), request.top_k, threshold, deadline
        )
        return facesearch_pb2.IdentifyResponse(faces=faces, settings=ops.deps.match_settings(threshold))

    @rpc("read")
    async def FindMe(self, request, context, caller, deadline) -> facesearch_pb2.FindMeResponse:
        ops = await self.ops(caller.tenant, deadline)
        threshold = ops.deps.threshold(optional_threshold(request))
        references = [photo_input(p) for p in request.references]
        matches, token = await ops.matcher.find_me(
            caller.tenant,
            references,
            request.person_id,
            threshold,
            request.limit,
            request.page_token,
            deadline,
            person_ids=list(request.person_ids),
            match_all=request.people_match == facesearch_pb2.PEOPLE_MATCH_ALL,
        )
        return facesearch_pb2.FindMeResponse(
            matches=matches, next_page_token=token, settings=ops.deps.match_settings(threshold)
        )

    @rpc("write")
    async def DeletePerson(self, request, context, caller, deadline) -> facesearch_pb2.DeletePersonResponse:
        async with self.editing(caller.tenant, deadline) as ops:
            deleted = await ops.edits.delete(caller.tenant, request.person_id, deadline)
        return facesearch_pb2.DeletePersonResponse(faces_deleted=deleted)

    @rpc("write")
    async def DeletePhoto(self, request, context, caller, deadline) -> facesearch_pb2.DeletePhotoResponse:
        async with self.editing(caller.tenant, deadline) as ops:
            deleted = await ops.indexer.delete_photo(caller.tenant, request.photo_id, deadline)
        return facesearch_pb2.DeletePhotoResponse(faces_deleted=deleted)

    @rpc("read")
    async def ListPeople(self, request, context, caller, deadline) -> facesearch_pb2.ListPeopleResponse:
        ops = await self.ops(caller.tenant, deadline)
        page, token = await ops.people.page(
            caller.tenant, request.page_size, request.page_token, deadline, include_hidden=request.include_hidden
        )
        people = []
        for p in page:
            archive = await ops.people.archive_faces(caller.tenant, p.person_id, deadline)
            people.append(
                facesearch_pb2.Person(
                    person_id=p.person_id,
                    display_name=p.display_name,
                    reference_faces=p.reference_faces,
                    archive_faces=archive,
                    hidden=p.hidden,
                    representative=face_ref(p.representative) if p.representative else None,
                )
            )
        return facesearch_pb2.ListPeopleResponse(people=people, next_page_token=token)

    @rpc("read")
    async def ClusterFaces(self, request, context, caller, deadline) -> facesearch_pb2.ClusterFacesResponse:
        ops = await self.ops(caller.tenant, deadline)
        return await ops.clusters.page(caller.tenant, request, deadline)

    @rpc("write")
    async def StartClustering(self, request, context, caller, deadline) -> facesearch_pb2.StartClusteringResponse:
        async with self.editing(caller.tenant, deadline) as ops:
            return facesearch_pb2.StartClusteringResponse(status=ops.clusters.start(caller.tenant, request.full))

    @rpc("read")
    async def GetClusteringStatus(
        self, request, context, caller, deadline
    ) -> facesearch_pb2.GetClusteringStatusResponse:
        ops = await self.ops(caller.tenant, deadline)
        return facesearch_pb2.GetClusteringStatusResponse(status=ops.clusters.current(caller.tenant))

    @rpc("write")
    async def NameCluster(self, request, context, caller, deadline) -> facesearch_pb2.NameClusterResponse:
        async with self.editing(caller.tenant, deadline) as ops:
            person = await ops.edits.name_cluster(
                caller.tenant, request.cluster_id, request.person_id, request.display_name, deadline
            )
        return facesearch_pb2.NameClusterResponse(person=person)

    @rpc("write")
    async def RenamePerson(self, request, context, caller, deadline) -> facesearch_pb2.RenamePersonResponse:
        async with self.editing(caller.tenant, deadline) as ops:
            person = await ops.edits.rename(caller.tenant, request.person_id, request.display_name, deadline)
        return facesearch_pb2.RenamePersonResponse(person=person)

    @rpc("write")
    async def MergePeople(self, request, context, caller, deadline) -> facesearch_pb2.MergePeopleResponse:
        async with self.editing(caller.tenant, deadline) as ops:
            person = await ops.edits.merge(caller.tenant, request.person_id, list(request.merged_person_ids), deadline)
        return facesearch_pb2.MergePeopleResponse(person=person)

    @rpc("write")
    async def AssignFace(self, request, context, caller, deadline) -> facesearch_pb2.AssignFaceResponse:
        async with self.editing(caller.tenant, deadline) as ops:
            face = await ops.edits.assign(caller.tenant, request.face_id, request.person_id, deadline)
        return facesearch_pb2.AssignFaceResponse(face=face, person_id=request.person_id)

    @rpc("write")
    async def RejectFace(self, request, context, caller, deadline) -> facesearch_pb2.RejectFaceResponse:
        async with self.editing(caller.tenant, deadline) as ops:
            face = await ops.edits.reject(caller.tenant, request.face_id, request.person_id, deadline)
        return facesearch_pb2.RejectFaceResponse(face=face)

    @rpc("write")
    async def HidePerson(self, request, context, caller, deadline) -> facesearch_pb2.HidePersonResponse:
        async with self.editing(caller.tenant, deadline) as ops:
            person = await ops.edits.hide(caller.tenant, request.person_id, request.hidden, deadline)
        return facesearch_pb2.HidePersonResponse(person=person)

    @rpc("read")
    async def ListPersonFaces(self, request, context, caller, deadline) -> facesearch_pb2.ListPersonFacesResponse:
        ops = await self.ops(caller.tenant, deadline)
        faces, token = await ops.edits.list_faces(
            caller.tenant, request.person_id, request.page_size, request.page_token, deadline
        )
        return facesearch_pb2.ListPersonFacesResponse(faces=faces, next_page_token=token)

    @rpc("read")
    async def Stats(self, request, context, caller, deadline) -> facesearch_pb2.StatsResponse:
        ops = await self.ops(caller.tenant, deadline)
        photos, faces = await ops.indexer.stats(caller.tenant, deadline)
        people = await ops.people.list(caller.tenant, deadline)
        return facesearch_pb2.StatsResponse(
            photos=photos,
            faces=faces,
            people=len(people),
            settings=ops.deps.match_settings(ops.deps.threshold()),
            indexing=self.progress.of(caller.tenant),
        )

    # --- moving the tenant's faces to another model ------------------------------------------

    @rpc("read")
    async def ListModels(self, request, context, caller, deadline) -> facesearch_pb2.ListModelsResponse:
        return facesearch_pb2.ListModelsResponse(models=await self.migration.list_models(caller.tenant, deadline))

    @rpc("read")
    async def ListMigrationPhotos(
        self, request, context, caller, deadline
    ) -> facesearch_pb2.ListMigrationPhotosResponse:
        return await self.migration.photos_to_move(caller.tenant, request, deadline)

    @rpc("write")
    async def MigratePhotos(self, request, context, caller, deadline) -> facesearch_pb2.MigratePhotosResponse:
        photos = [photo_input(p) for p in request.photos]
        results = await self.migration.move_photos(caller.tenant, request, photos, deadline)
        return facesearch_pb2.MigratePhotosResponse(results=results)

    @rpc("write")
    async def SwitchModel(self, request, context, caller, deadline) -> facesearch_pb2.SwitchModelResponse:
        return await self.migration.switch(caller.tenant, request, deadline)

    @rpc("write")
    async def DropModel(self, request, context, caller, deadline) -> facesearch_pb2.DropModelResponse:
        deleted = await self.migration.drop(caller.tenant, request.model_id, deadline)
        return facesearch_pb2.DropModelResponse(faces_deleted=deleted)
