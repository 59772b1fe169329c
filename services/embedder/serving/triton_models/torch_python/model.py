"""Triton python-backend model: the TorchScript FaceNet run with torch, on a CUDA GPU in half
precision by default (the ``torch-cuda-python`` flavour).

It is meant for GPU machines that have torch but neither ONNX Runtime GPU nor TensorRT.
This file is not imported by facesearch itself, and cannot import it:
``services.embedder.serving.provisioning`` copies it into the model repository as
``<repo>/torch-cuda-python/<model>/<version>/model.py``, beside ``model.pt``
(``weights.onnx_export.export_torchscript``: ServedFaceNet traced on the CPU in float32), and
Triton's python-backend stub process runs it.

Contract: the config.pbtxt that provisioning builds from the model contract
(``services.embedder.models``; the ``torch-cuda-python`` flavour of ``flavours.py``), which
Triton hands to ``initialize`` as ``args["model_config"]`` (JSON):

- its one input (for FaceNet ``crops``: UINT8, dims [160, 160, 3], aligned RGB face crops)
  and one output (``embeddings``: FP32, dims [512], unit vectors, one row per crop, whatever
  the precision the network ran in), batched: names, data types and dimensions are read
  from the config, never repeated here;
- parameter ``device`` (string, default "cuda"): ``cuda`` runs each model instance on the
  GPU Triton gives it (``instance_group { kind: KIND_GPU }``); ``cpu`` on the CPU
  (``KIND_CPU``), which is how the tests run this very file on machines without a GPU;
- parameter ``precision`` (string, default "fp16"): ``fp16`` converts the weights to half
  precision (the traced model casts its input to the weights' dtype); ``fp32`` keeps them;
- parameter ``intra_op_num_threads`` (string, default "1"): torch's CPU threads per instance.

Requests met by dynamic batching are concatenated, run once, and split back per request;
a request that cannot be read, or a batch that fails, gets an error response and the model
keeps serving. Tensors cross between Triton and torch through DLPack only
(``torch.from_dlpack`` and ``pb_utils.Tensor.from_dlpack``), for the reason given in
``triton_models/onnx_python/model.py``: the bundled stub's own numpy conversions are wrong
under numpy 2.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
import triton_python_backend_utils as pb_utils

DEVICES = ("cuda", "cpu")
PRECISIONS = {"fp16": torch.float16, "fp32": torch.float32}


class TensorConfig:
    """One tensor of the model's config: name, torch dtype, dimensions of one batch item."""

    def __init__(self, entry: dict) -> None:
        self.name = entry["name"]
        self.dtype = getattr(torch, np.dtype(pb_utils.triton_string_to_numpy(entry["data_type"])).name)
        self.dims = tuple(int(dim) for dim in entry["dims"])

    def check(self, tensor: torch.Tensor) -> None:
        """Raises ValueError unless ``tensor`` is a batch of this tensor."""
        if tensor.dtype != self.dtype or tuple(tensor.shape[1:]) != self.dims:
            raise ValueError(
                f"'{self.name}' must be {self.dtype} [N, {', '.join(map(str, self.dims))}], "
                f"got {tensor.dtype} {list(tensor.shape)}"
            )


def only(entries: list, what: str) -> dict:
    if len(entries) != 1:
        raise ValueError(f"the model config must have one {what}, not {len(entries)}")
    return entries[0]


def parameter(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default) or default


def choose_device(name: str, instance_kind: str, device_id: int) -> torch.device:
    """The torch device of one model instance; cuda means the GPU Triton placed it on."""
    if name not in DEVICES:
        raise ValueError(f"parameter device must be one of {DEVICES}, not {name!r}")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "parameter device is cuda but torch sees no CUDA GPU; serve this flavour on a GPU machine, "
            "or set the device parameter to cpu (FACESEARCH_EMBEDDER_TORCH_DEVICE=cpu)"
        )
    return torch.device("cuda", device_id if instance_kind == "GPU" else 0)


def load_module(path: str, device: torch.device, precision: str) -> torch.jit.ScriptModule:
    if precision not in PRECISIONS:
        raise ValueError(f"parameter precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.x, and still what this loads
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load", category=FutureWarning)
        module = torch.jit.load(path, map_location=device)
    module = module.to(dtype=PRECISIONS[precision]).eval()
    return module


def embed(module: torch.jit.ScriptModule, crops: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch of crops (for FaceNet uint8 N x 160 x 160 x 3, any device) -> float32 unit rows
    (N x 512) on the CPU."""
    # optimized_execution(False): the plain TorchScript interpreter, without the profiling
    # executor's re-specialisation for every new batch size.
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        rows = module(crops.to(device, non_blocking=True))
        rows = F.normalize(rows.float(), p=2.0, dim=1)
    return rows.cpu().contiguous()


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.input = TensorConfig(only(config.get("input", []), "input"))
        self.output = TensorConfig(only(config.get("output", []), "output"))
        threads = int(parameter(config, "intra_op_num_threads", "1"))
        precision = parameter(config, "precision", "fp16")
        torch.set_num_threads(threads)
        self.device = choose_device(
            parameter(config, "device", "cuda"), args["model_instance_kind"], int(args["model_instance_device_id"])
        )
        self.path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        self.module = load_module(self.path, self.device, precision)
        # One small batch first, so that the first request does not pay for lazy initialisation.
        embed(self.module, torch.zeros(1, *self.input.dims, dtype=self.input.dtype), self.device)
        pb_utils.Logger.log_info(
            f"{args['model_name']} ({args['model_instance_name']}): {self.path} with torch {torch.__version__} "
            f"on {self.device} in {precision}, {threads} CPU thread(s)"
        )

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        batches: list[torch.Tensor] = []
        owners: list[int] = []  # index into requests of each entry in batches

        for index, request in enumerate(requests):
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, self.input.name)
                if tensor is None:
                    raise ValueError(f"input '{self.input.name}' is missing")
                crops = torch.from_dlpack(tensor)  # zero-copy view of the request's input
                self.input.check(crops)
                batches.append(crops)
                owners.append(index)
            except Exception as error:  # noqa: BLE001 - reported to that request's client
                responses[index] = _error(f"bad request: {error}")

        if batches:
            try:
                batch = batches[0] if len(batches) == 1 else torch.cat(batches)
                rows = embed(self.module, batch, self.device).to(self.output.dtype)
                if rows.shape[0] != batch.shape[0]:
                    raise RuntimeError(f"model returned {rows.shape[0]} rows for {batch.shape[0]} crops")
                self.output.check(rows)
                parts = torch.split(rows, [crops.shape[0] for crops in batches])
                for index, part in zip(owners, parts):
                    responses[index] = pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor.from_dlpack(self.output.name, part.contiguous())]
                    )
            except Exception as error:  # noqa: BLE001 - the whole batch failed
                for index in owners:
                    responses[index] = _error(f"torch failed: {error}")
        return responses

    def finalize(self) -> None:
        self.module = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _error(message: str):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
