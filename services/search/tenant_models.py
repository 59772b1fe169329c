"""Which embedding model's collection holds each tenant's faces in use.

A tenant starts on the gateway's default model; after its faces were copied into
another model's collection, the gateway switches it there. The choice is kept in the
same store as the faces (a collection of one-dimensional points, one per tenant), so it
lives wherever the faces live and every replica reads the same. A change is a
compare-and-set under this process's lock: of two switches racing, one wins.
"""

from __future__ import annotations

import datetime
import threading
import uuid
from dataclasses import dataclass

import numpy as np

from services.search.faces import FaceIndex, InvalidRequest
from services.search.store.base import Conditions, FaceStore

COLLECTION = "tenant-models"
# Namespace of the point ids: one point per tenant.
TENANT_ID_NAMESPACE = uuid.UUID("a4f1f5d2-6c2e-4d0b-8f59-2b8e0d6f7c13")
_PLACEHOLDER = np.ones((1, 1), dtype=np.float32)  # the store needs a vector; only the payload matters


class ChoiceChanged(Exception):
    """The tenant's model is not the one the caller expected (FAILED_PRECONDITION)."""


@dataclass(frozen=True)
class TenantModel:
    tenant: str
    model_id: str = ""  # empty: none chosen
    dimension: int = 0
    version: str = ""
    previous_model_id: str = ""
    changed_at: str = ""  # ISO 8601, UTC


class TenantModels:
    def __init__(self, store: FaceStore, index: FaceIndex) -> None:
        self.store = store
        self.index = index
        self._lock = threading.Lock()

    def get(self, tenant: str) -> TenantModel:
        tenant = self.index.checked_tenant(tenant)
        if COLLECTION not in self.store.collections():
            return TenantModel(tenant)
        faces, _ = self.store.scroll(COLLECTION, Conditions(ids=(_point_id(tenant),)), 1, None)
        if not faces:
            return TenantModel(tenant)
        p = faces[0].payload
        return TenantModel(
            tenant,
            p.get("model_id", ""),
            int(p.get("dimension", 0)),
            p.get("version", ""),
            p.get("previous_model_id", ""),
            p.get("changed_at", ""),
        )

    def set(self, tenant: str, model_id: str, version: str, dimension: int, expected_model_id: str) -> TenantModel:
        model_id, dimension = self.index.checked_model(model_id, dimension)
        with self._lock:
            current = self.get(tenant)
            if current.model_id != expected_model_id:
                shown = current.model_id or "none"
                raise ChoiceChanged(
                    f"the tenant's model is {shown}, not {expected_model_id or 'none'}: it was changed meanwhile"
                )
            chosen = TenantModel(
                current.tenant,
                model_id,
                dimension,
                version,
                current.model_id,
                datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            )
            payload = {
                "tenant": chosen.tenant,
                "model_id": chosen.model_id,
                "dimension": chosen.dimension,
                "version": chosen.version,
                "previous_model_id": chosen.previous_model_id,
                "changed_at": chosen.changed_at,
            }
            self.store.ensure_collection(COLLECTION, 1)
            self.store.upsert(COLLECTION, [_point_id(chosen.tenant)], _PLACEHOLDER, [payload])
            return chosen


def _point_id(tenant: str) -> str:
    return str(uuid.uuid5(TENANT_ID_NAMESPACE, tenant))


__all__ = ["COLLECTION", "ChoiceChanged", "InvalidRequest", "TenantModel", "TenantModels"]
