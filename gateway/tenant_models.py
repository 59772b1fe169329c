"""Which embedding model each tenant's calls use.

A tenant's faces are in use in one model's collection: the gateway's default model
until a migration switches it (gateway/migration.py). The choice is kept by the search
service, so every gateway replica reads the same; each replica remembers it for
``model_cache_s`` so that a call costs no extra round trip, and the replica that switches
a tenant knows at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

from facesearch.v1 import common_pb2, search_pb2
from gateway.downstream import SearchClient
from gateway.errors import GatewayError
from services.runtime.deadlines import Deadline

OUT_OF_REACH = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
MAX_REMEMBERED = 100_000  # tenants whose choice is remembered at once (the oldest go first)


@dataclass(frozen=True)
class ModelChoice:
    model_id: str  # the model in use
    stored_model_id: str  # what the search service holds: "" until a switch chose one
    read_at: float


class TenantModels:
    def __init__(self, search: SearchClient, default_model_id: str, cache_s: float) -> None:
        self.search = search
        self.default_model_id = default_model_id
        self.cache_s = cache_s
        self._choices: dict[str, ModelChoice] = {}

    async def choice(self, tenant: str, deadline: Deadline, fresh: bool = False) -> ModelChoice:
        """The tenant's model, as remembered when read less than ``cache_s`` ago (unless ``fresh``)."""
        known = self._choices.get(tenant)
        if known is not None and not fresh and time.monotonic() - known.read_at < self.cache_s:
            return known
        try:
            reply = await self.search.get_tenant_model(search_pb2.GetTenantModelRequest(tenant=tenant), deadline)
        except GatewayError as error:
            # The search service is out of reach: the choice read last still holds (a call that
            # needs the store fails on its own), unless the caller must have the current one.
            if known is None or fresh or error.code not in OUT_OF_REACH:
                raise
            return known
        return self._remember(tenant, reply)

    async def in_use(self, tenant: str, deadline: Deadline) -> str:
        return (await self.choice(tenant, deadline)).model_id

    async def switch(
        self, tenant: str, model: common_pb2.EmbeddingModel, expected: ModelChoice, deadline: Deadline
    ) -> search_pb2.TenantModel:
        """Chooses ``model`` for the tenant unless the stored choice is no longer ``expected``'s
        (FAILED_PRECONDITION)."""
        request = search_pb2.SetTenantModelRequest(
            tenant=tenant, model=model, expected_model_id=expected.stored_model_id
        )
        reply = await self.search.set_tenant_model(request, deadline)
        self._remember(tenant, reply)
        return reply

    def _remember(self, tenant: str, reply: search_pb2.TenantModel) -> ModelChoice:
        stored = reply.model.id if reply.HasField("model") else ""
        choice = ModelChoice(stored or self.default_model_id, stored, time.monotonic())
        self._choices.pop(tenant, None)
        self._choices[tenant] = choice
        while len(self._choices) > MAX_REMEMBERED:
            del self._choices[next(iter(self._choices))]
        return choice
