"""Gateway settings (environment: FACESEARCH_GATEWAY_<FIELD>; file: [gateway]).

The embedder the gateway calls is configured in the embedder's own section
(``FACESEARCH_EMBEDDER_TRITON_URL``, model id and version, client batch size,
retries): the gateway is one more client of that Triton server.

API keys are never stored in the clear: ``api_keys_file`` and ``api_keys`` hold lines
``<tenant> <sha256 of the key> [read|write]`` (see gateway/auth.py;
``facesearch keys add TENANT`` makes a key and writes its line).
"""

from __future__ import annotations

from pathlib import Path

import grpc
from pydantic import Field, field_validator, model_validator

from gateway.admission import Admission
from gateway.thresholds import read_thresholds
from services.embedder import models
from services.runtime.channels import MAX_ATTEMPTS, RetryPolicy
from services.runtime.page_tokens import PageTokenKey, key_bytes
from services.runtime.settings import ServiceSettings

# Minimum cosine similarity for "same person", per embedding model. facenet-casia: the
# lowest threshold with FAR <= 0.001 on the labelled photos of ../shared/data through the
# served pipeline (bench/results/threshold_calibration.md: FAR 0.00098 on 16,339
# different-person pairs, 95% upper bound 0.00149, VAL 0.903 on 114 same-person pairs).
# facenet-vggface2: not calibrated here (its weights cannot be fetched offline); the value
# usually quoted. dlib-resnet: calibrated the same way for FAR <= 0.001
# (bench/results/evaluation_dlib-resnet.md: FAR 0.00095 on 15,855 different-person pairs,
# 95% upper bound 0.00146, VAL 0.912 on 114 same-person pairs; its descriptors are not
# centred, so the similarities of strangers are high too, about 0.83).
# `facesearch calibrate` measures any of them on your own photos.
DEFAULT_THRESHOLDS = {"facenet-casia": 0.4264, "facenet-vggface2": 0.40, "dlib-resnet": 0.9299}
# Stricter than the match thresholds: where strangers are about 1 in 20,000 pairs of the labelled photos.
DEFAULT_CLUSTER_THRESHOLDS = {"facenet-casia": 0.55, "facenet-vggface2": 0.55, "dlib-resnet": 0.94}
LOCAL_THRESHOLDS_FILE = Path("var/gateway/thresholds.json")


class GatewaySettings(ServiceSettings):
    section = "gateway"

    port: int = Field(50050, ge=0, le=65535)
    detector_address: str = Field("127.0.0.1:50051", description="Detector gRPC address.")
    search_address: str = Field("127.0.0.1:50052", description="Search gRPC address.")

    api_keys_file: Path | None = Field(
        None, description="File of hashed API keys, one '<tenant> <sha256> [read|write]' per line."
    )
    api_keys: str = Field("", description="More hashed keys, same lines, separated by newlines or ';'.")
    api_keys_reload_s: float = Field(
        1.0,
        ge=0,
        description="How often a call checks whether api_keys_file changed (and reloads it); 0: at every call. "
        "SIGHUP reloads it at once.",
    )

    tls_cert_file: Path | None = Field(
        None, description="PEM certificate chain: with tls_key_file, the gateway serves TLS only."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA certificates: when set, callers must present a client certificate they signed."
    )

    max_concurrent_calls: int = Field(
        64, ge=1, description="Calls served at once (an IndexPhotos stream is one); past it RESOURCE_EXHAUSTED."
    )
    max_request_mb: float = Field(
        256.0, gt=0, description="Request bytes held at once by the calls served; past it RESOURCE_EXHAUSTED."
    )
    retry_after_s: float = Field(
        0.25, gt=0, description="Retry hint given with RESOURCE_EXHAUSTED (grpc-retry-pushback-ms, +-50%)."
    )

    similarity_thresholds: dict[str, float] = Field(
        DEFAULT_THRESHOLDS, description="Cosine similarity counted as the same person, per model id."
    )
    thresholds_file: Path | None = Field(
        LOCAL_THRESHOLDS_FILE,
        description="Thresholds written by `facesearch calibrate`, read at start; they replace "
        "similarity_thresholds for the models they name. Missing: not used.",
    )

    request_timeout_s: float = Field(
        120.0, gt=0, description="Deadline of a call whose caller set none; downstream calls get what is left."
    )
    downstream_retries: int = Field(
        3,
        ge=0,
        le=MAX_ATTEMPTS - 1,
        description="Retries of a detector or search call answered UNAVAILABLE (gRPC allows at most 4).",
    )
    retry_backoff_s: float = Field(
        0.2, ge=0, description="First retry delay (give or take 20%); doubles each time, up to 8 times this."
    )
    page_token_key: PageTokenKey = Field(
        None,
        description="Key signing FindMe and ListPeople page tokens; unset: a random one per process. "
        "Replicas behind one address need the same key.",
    )

    embedder_urls: dict[str, str] = Field(
        {},
        description="More embedding models this gateway embeds with, by registered model id: the address of "
        "the Triton serving each (a tenant's faces can be moved to them: `facesearch migrate`). The default "
        "model is the embedder section's.",
    )
    model_cache_s: float = Field(
        5.0,
        ge=0,
        description="How long a replica remembers which model a tenant uses (another replica's switch "
        "reaches it within this).",
    )

    detect_batch_size: int = Field(8, ge=1, le=256, description="Photos per DetectBatch call.")
    index_concurrency: int = Field(
        4, ge=1, le=256, description="Detect batches of one IndexPhotos stream in flight together."
    )
    max_photos_per_request: int = Field(64, ge=1, description="Most photos in one Enroll or FindMe.")
    max_photo_mb: float = Field(50.0, gt=0, description="Largest photo accepted, before decoding.")
    max_matches: int = Field(
        1000,
        ge=1,
        description="Most faces FindMe ranks per reference (all pages); at most the search service's max_top_k.",
    )
    max_page_size: int = Field(500, ge=1, description="Largest FindMe and ListPeople page.")
    enrollment_dominance: float = Field(
        2.0,
        ge=1.0,
        description="Enrolment: a photo with several faces uses the largest only when "
        "it is this many times the area of the next.",
    )
    cluster_thresholds: dict[str, float] = Field(
        DEFAULT_CLUSTER_THRESHOLDS,
        description="Cosine similarity at which two faces are close enough to grow a cluster, per model id "
        "(stricter than the match threshold).",
    )
    cluster_min_neighbours: int = Field(
        2, ge=1, description="Close faces (of other photos) a face needs to be a core face, which grows its cluster."
    )
    cluster_neighbours: int = Field(
        30, ge=2, le=1000, description="Nearest faces looked at per face in a clustering run."
    )
    cluster_min_face_size: float = Field(
        24.0, ge=0, description="Faces smaller than this (shorter box side, pixels), or blurred, are not clustered."
    )
    cluster_after_new_faces: int = Field(
        200, ge=0, description="A clustering run starts by itself once this many faces were indexed; 0: never."
    )
    cluster_run_timeout_s: float = Field(6 * 3600.0, gt=0, description="Longest clustering run.")
    min_face_size: int = Field(
        24, ge=0, description="Reference faces (Enroll, Verify, FindMe) smaller than this are not used."
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> GatewaySettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set tls_cert_file and tls_key_file together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        return self

    @field_validator("similarity_thresholds")
    @classmethod
    def _valid_thresholds(cls, thresholds: dict[str, float]) -> dict[str, float]:
        return _checked_thresholds(thresholds)

    def with_calibrated_thresholds(self) -> GatewaySettings:
        """These settings with the thresholds of ``thresholds_file`` (if there is one) in
        place of the configured ones for the models it names."""
        path = self.thresholds_file
        if path is None or not path.is_file():
            return self
        try:
            calibrated = _checked_thresholds(read_thresholds(path))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{path} is not a thresholds file of `facesearch calibrate`: {error!r}") from None
        return self.model_copy(update={"similarity_thresholds": {**self.similarity_thresholds, **calibrated}})

    def admission(self) -> Admission:
        """The bounds on the calls and request bytes a gateway process takes on."""
        return Admission(self.max_concurrent_calls, int(self.max_request_mb * 1024 * 1024), self.retry_after_s)

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """The TLS credentials the gateway serves with, or None for plaintext."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        pair = [(self.tls_key_file.read_bytes(), self.tls_cert_file.read_bytes())]
        if self.tls_client_ca_file is None:
            return grpc.ssl_server_credentials(pair)
        return grpc.ssl_server_credentials(
            pair, root_certificates=self.tls_client_ca_file.read_bytes(), require_client_auth=True
        )

    def retry_policy(self) -> RetryPolicy:
        """How the gateway's channels retry a call answered UNAVAILABLE."""
        return RetryPolicy.from_retries(self.downstream_retries, self.retry_backoff_s)

    @field_validator("embedder_urls")
    @classmethod
    def _registered_models(cls, urls: dict[str, str]) -> dict[str, str]:
        for model_id, url in urls.items():
            models.by_id(model_id)  # raises ValueError naming the registered ones
            if not url.strip():
                raise ValueError(f"embedder_urls: no address for {model_id}")
        return urls

    def page_key(self) -> bytes | None:
        """The page token key, or None for a random one."""
        return key_bytes(self.page_token_key)

    def cluster_threshold(self, model_id: str) -> float:
        if model_id not in self.cluster_thresholds:
            known = ", ".join(sorted(self.cluster_thresholds))
            raise ValueError(f"no cluster threshold configured for model {model_id!r} (configured: {known})")
        return self.cluster_thresholds[model_id]

    def threshold(self, model_id: str) -> float:
        if model_id not in self.similarity_thresholds:
            known = ", ".join(sorted(self.similarity_thresholds))
            raise ValueError(f"no similarity threshold configured for model {model_id!r} (configured: {known})")
        return self.similarity_thresholds[model_id]


def _checked_thresholds(thresholds: dict[str, float]) -> dict[str, float]:
    for model_id, value in thresholds.items():
        if not -1.0 <= value <= 1.0:
            raise ValueError(f"threshold of {model_id!r} must be a cosine similarity in [-1, 1], got {value}")
    return thresholds
