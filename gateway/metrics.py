"""What the gateway counts beyond every server's request metrics: the photos it
indexed by outcome, and the faces it stored."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from facesearch.v1 import facesearch_pb2


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.photos = Counter(
            "facesearch_gateway_photos", "Photos sent to IndexPhotos, by outcome.", ["status"], registry=registry
        )
        self.faces_stored = Counter(
            "facesearch_gateway_faces_stored", "Faces stored by IndexPhotos and Enroll.", registry=registry
        )

    def photo(self, result: facesearch_pb2.PhotoResult) -> None:
        status = facesearch_pb2.PhotoStatus.Name(result.status).removeprefix("PHOTO_STATUS_").lower()
        self.photos.labels(status).inc()
        self.faces_stored.inc(result.faces_stored)
