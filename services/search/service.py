"""The Search gRPC API: proto conversion around FaceIndex, nothing else."""

from __future__ import annotations

import asyncio
import datetime
from concurrent.futures import Executor
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from facesearch.v1 import common_pb2, search_pb2, search_pb2_grpc
from services.search.faces import FaceFilter, FaceIndex, InvalidRequest, NewFace, Selector
from services.search.store.base import StoredFace
from services.search.tenant_models import ChoiceChanged, TenantModel, TenantModels

_SOURCE_NAMES = {search_pb2.FACE_SOURCE_GALLERY: "gallery", search_pb2.FACE_SOURCE_ENROLLMENT: "enrollment"}
_SOURCE_ENUMS = {name: value for value, name in _SOURCE_NAMES.items()}


class SearchService(search_pb2_grpc.SearchServicer):
    def __init__(self, index: FaceIndex, executor: Executor) -> None:
        self.index = index
        self.tenant_models = TenantModels(index.store, index)
        self.executor = executor

    async def _call(self, context: grpc.aio.ServicerContext, function, *args, **kwargs):
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, lambda: function(*args, **kwargs))
        except InvalidRequest as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except ChoiceChanged as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))

    async def Upsert(self, request: search_pb2.UpsertRequest, context) -> search_pb2.UpsertResponse:
        faces = [NewFace(vector=list(f.vector), payload=_payload(f.payload), id=f.id) for f in request.faces]
        ids = await self._call(
            context, self.index.upsert, request.tenant, request.model.id, request.model.dimension, faces
        )
        return search_pb2.UpsertResponse(ids=ids)

    async def Query(self, request: search_pb2.QueryRequest, context) -> search_pb2.QueryResponse:
        results = await self._call(
            context,
            self.index.query,
            request.tenant,
            request.model.id,
            request.model.dimension,
            [list(v.values) for v in request.vectors],
            top_k=request.top_k,
            score_threshold=request.score_threshold if request.HasField("score_threshold") else None,
            face_filter=_filter(request.filter),
            with_vectors=request.with_vectors,
        )
        return search_pb2.QueryResponse(
            results=[
                search_pb2.QueryResult(hits=[search_pb2.ScoredFace(score=hit.score, face=_record(hit)) for hit in hits])
                for hits in results
            ]
        )

    async def Delete(self, request: search_pb2.DeleteRequest, context) -> search_pb2.DeleteResponse:
        selector = Selector(
            ids=tuple(request.ids.ids) if request.HasField("ids") else (),
            photo_id=request.photo_id,
            person_id=request.person_id,
            whole_tenant=request.whole_tenant,
        )
        deleted = await self._call(context, self.index.delete, request.tenant, request.model_id, selector)
        return search_pb2.DeleteResponse(deleted=deleted)

    async def Count(self, request: search_pb2.CountRequest, context) -> search_pb2.CountResponse:
        count = await self._call(context, self.index.count, request.tenant, request.model_id, _filter(request.filter))
        return search_pb2.CountResponse(count=count)

    async def Scroll(self, request: search_pb2.ScrollRequest, context) -> search_pb2.ScrollResponse:
        page = await self._call(
            context,
            self.index.scroll,
            request.tenant,
            request.model.id,
            request.model.dimension,
            _filter(request.filter),
            page_size=request.page_size,
            page_token=request.page_token,
            with_vectors=request.with_vectors,
        )
        return search_pb2.ScrollResponse(faces=[_record(face) for face in page.faces], next_page_token=page.next_token)

    async def GetTenantModel(
        self, request: search_pb2.GetTenantModelRequest, context
    ) -> search_pb2.GetTenantModelResponse:
        choice = await self._call(context, self.tenant_models.get, request.tenant)
        return search_pb2.GetTenantModelResponse(choice=_tenant_model(choice))

    async def SetTenantModel(
        self, request: search_pb2.SetTenantModelRequest, context
    ) -> search_pb2.SetTenantModelResponse:
        model = request.model
        chosen = await self._call(
            context,
            self.tenant_models.set,
            request.tenant,
            model.id,
            model.version,
            model.dimension,
            request.expected_model_id,
        )
        return search_pb2.SetTenantModelResponse(choice=_tenant_model(chosen))


def _tenant_model(choice: TenantModel) -> search_pb2.TenantModel:
    message = search_pb2.TenantModel(tenant=choice.tenant, previous_model_id=choice.previous_model_id)
    if choice.model_id:
        message.model.CopyFrom(
            common_pb2.EmbeddingModel(id=choice.model_id, version=choice.version, dimension=choice.dimension)
        )
    if choice.changed_at:
        message.changed_at.FromDatetime(datetime.datetime.fromisoformat(choice.changed_at))
    return message


def _filter(message: search_pb2.FaceFilter) -> FaceFilter:
    return FaceFilter(
        person_ids=tuple(message.person_ids),
        photo_ids=tuple(message.photo_ids),
        source=_SOURCE_NAMES.get(message.source),
        photo_hashes=tuple(message.photo_hashes),
        face_index=message.face_index if message.HasField("face_index") else None,
        cluster_ids=tuple(message.cluster_ids),
        cluster_run=message.cluster_run if message.HasField("cluster_run") else None,
        face_ids=tuple(message.face_ids),
        not_person_ids=tuple(message.not_person_ids),
    )


def _payload(message: search_pb2.FacePayload) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "tenant": message.tenant,
        "photo_id": message.photo_id,
        "photo_uri": message.photo_uri,
        "photo_hash": message.photo_hash,
        "face_index": message.face_index,
        "box": [message.box.x_min, message.box.y_min, message.box.x_max, message.box.y_max],
        "confidence": message.confidence,
        "quality": {
            "blur_variance": message.quality.blur_variance,
            "blurred": message.quality.blurred,
            "face_size": message.quality.face_size,
        },
        "person_id": message.person_id,
        "source": _SOURCE_NAMES.get(message.source, "gallery"),
    }
    if message.metadata:
        payload["metadata"] = dict(message.metadata)
    if message.person_name:
        payload["person_name"] = message.person_name
    # Clustering state: always written, so that faces no run has looked at can be found.
    payload["cluster_id"] = message.cluster_id
    payload["cluster_run"] = message.cluster_run
    payload["cluster_core"] = message.cluster_core
    if message.not_person_ids:
        payload["not_person_ids"] = list(message.not_person_ids)
    if message.person_hidden:
        payload["person_hidden"] = True
    if message.HasField("indexed_at"):
        payload["indexed_at"] = message.indexed_at.ToDatetime(datetime.UTC).isoformat(timespec="milliseconds")
    return payload


def _record(face: StoredFace) -> search_pb2.FaceRecord:
    p = face.payload
    box = p.get("box") or [0, 0, 0, 0]
    quality = p.get("quality") or {}
    indexed_at = timestamp_pb2.Timestamp()
    if p.get("indexed_at"):
        indexed_at.FromDatetime(datetime.datetime.fromisoformat(p["indexed_at"]))
    payload = search_pb2.FacePayload(
        tenant=p.get("tenant", ""),
        photo_id=p.get("photo_id", ""),
        photo_uri=p.get("photo_uri", ""),
        photo_hash=p.get("photo_hash", ""),
        face_index=int(p.get("face_index", 0)),
        box=common_pb2.BoundingBox(x_min=box[0], y_min=box[1], x_max=box[2], y_max=box[3]),
        confidence=float(p.get("confidence", 0.0)),
        quality=common_pb2.FaceQuality(
            blur_variance=float(quality.get("blur_variance", 0.0)),
            blurred=bool(quality.get("blurred", False)),
            face_size=float(quality.get("face_size", 0.0)),
        ),
        person_id=p.get("person_id", ""),
        source=_SOURCE_ENUMS.get(p.get("source", ""), search_pb2.FACE_SOURCE_UNSPECIFIED),
        model_id=p.get("model_id", ""),
        indexed_at=indexed_at,
        metadata={str(k): str(v) for k, v in (p.get("metadata") or {}).items()},
        person_name=p.get("person_name", ""),
        cluster_id=p.get("cluster_id", ""),
        not_person_ids=[str(i) for i in p.get("not_person_ids") or ()],
        cluster_run=int(p.get("cluster_run", 0)),
        person_hidden=bool(p.get("person_hidden", False)),
        cluster_core=bool(p.get("cluster_core", False)),
    )
    vector = [] if face.vector is None else [float(v) for v in face.vector]
    return search_pb2.FaceRecord(id=face.id, vector=vector, payload=payload)
