"""The Python SDK of facesearch: typed clients of the gateway's FaceSearch API."""

from sdk.client import AsyncFaceSearchClient, FaceSearchClient, FaceSearchError, as_photo

__all__ = ["AsyncFaceSearchClient", "FaceSearchClient", "FaceSearchError", "as_photo"]
