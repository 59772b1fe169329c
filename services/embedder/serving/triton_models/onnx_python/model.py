"""Triton python-backend model: an ONNX embedding model run with ONNX Runtime on the CPU.

This file is not imported by facesearch itself, and cannot import it: provisioning
(``services.embedder.serving.provisioning``, the ``onnx-python`` flavour of ``flavours.py``)
copies it into a Triton model repository as ``<repo>/<model>/<version>/model.py``, beside
the ``model.onnx`` it serves, and Triton's python-backend stub process runs it.

Contract: the model's config.pbtxt, which Triton hands to ``initialize`` as
``args["model_config"]`` (JSON), and which provisioning builds from the model contract
(``services.embedder.models``):

- its one input (for FaceNet ``crops``: UINT8, dims [160, 160, 3], aligned RGB face crops)
  and one output (``embeddings``: FP32, dims [512], one row per crop), batched: their names,
  data types and dimensions are read from the config, never repeated here;
- parameter ``intra_op_num_threads`` (string, default "1"): ONNX Runtime's threads per
  model instance. Scale with ``instance_group { count }`` rather than threads.

``model.onnx`` takes the batch of crops as its first input and returns the embeddings as
its first output; the ONNX tensor names need not be the config's.

With dynamic batching Triton hands ``execute`` several requests at once, each with a
batch of one or more crops. They are concatenated, run through ONNX Runtime once, and
the result rows are split back per request in order. A request that cannot be read, or
a batch that ONNX Runtime fails on, gets an error response (a ``TritonError`` the client
sees as ``InferenceServerException``); the model itself keeps serving.

Tensors cross between Triton and numpy through DLPack only (``np.from_dlpack`` and
``pb_utils.Tensor.from_dlpack``), never ``Tensor.as_numpy()`` or ``pb_utils.Tensor(name,
array)``: the python-backend stub bundled with Triton 2.51 (nvidia-pytriton 0.7.0) was
built against numpy 1.x, and its own numpy conversions are wrong under numpy 2 (most
likely its pybind11 reads numpy 1's dtype struct layout). Measured with numpy 2.4:
``as_numpy()`` silently returned wrong values (a uint8 input [1..6] came back as all ones),
and ``Tensor(name, array)`` sent an empty output. DLPack goes
through numpy's stable protocol and works with numpy 1.22+ and 2.x alike.

One wrinkle of that stub: having taken over an output's DLPack capsule, it renames the
capsule "used_dlpack" instead of the "used_dltensor" the DLPack protocol names, and numpy's
capsule destructor, not recognising it, printed a harmless "PyCapsule_GetPointer called
with incorrect name" traceback into Triton's log for every response. ``_output_tensor``
gives the consumed capsule the protocol's name.
"""

from __future__ import annotations

import ctypes
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

_capsule_get_name = ctypes.pythonapi.PyCapsule_GetName
_capsule_get_name.argtypes = [ctypes.py_object]
_capsule_get_name.restype = ctypes.c_char_p
_capsule_set_name = ctypes.pythonapi.PyCapsule_SetName
_capsule_set_name.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_set_name.restype = ctypes.c_int
_USED_DLTENSOR = b"used_dltensor"  # a module global: the capsule keeps a pointer to these bytes


class TensorConfig:
    """One tensor of the model's config: name, numpy dtype, dimensions of one batch item."""

    def __init__(self, entry: dict) -> None:
        self.name = entry["name"]
        self.dtype = np.dtype(pb_utils.triton_string_to_numpy(entry["data_type"]))
        self.dims = tuple(int(dim) for dim in entry["dims"])

    def check(self, array: np.ndarray) -> None:
        """Raises ValueError unless ``array`` is a batch of this tensor."""
        if array.dtype != self.dtype or tuple(array.shape[1:]) != self.dims:
            raise ValueError(
                f"'{self.name}' must be {self.dtype} [N, {', '.join(map(str, self.dims))}], "
                f"got {array.dtype} {list(array.shape)}"
            )


def only(entries: list, what: str) -> dict:
    if len(entries) != 1:
        raise ValueError(f"the model config must have one {what}, not {len(entries)}")
    return entries[0]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.input = TensorConfig(only(config.get("input", []), "input"))
        self.output = TensorConfig(only(config.get("output", []), "output"))
        parameters = config.get("parameters", {})
        threads = int(parameters.get("intra_op_num_threads", {}).get("string_value", "1"))

        # args["model_repository"] is this model's folder, e.g. <repo>/facenet.
        self.onnx_path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.onnx_path, options, providers=["CPUExecutionProvider"])
        self.onnx_input = self.session.get_inputs()[0].name
        self.onnx_output = self.session.get_outputs()[0].name
        pb_utils.Logger.log_info(
            f"{args['model_name']} ({args['model_instance_name']}): {self.onnx_path} with "
            f"onnxruntime {ort.__version__}, numpy {np.__version__}, {threads} intra-op thread(s)"
        )

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        batches: list[np.ndarray] = []
        owners: list[int] = []  # index into requests of each entry in batches

        for index, request in enumerate(requests):
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, self.input.name)
                if tensor is None:
                    raise ValueError(f"input '{self.input.name}' is missing")
                crops = np.from_dlpack(tensor)  # zero-copy view of the request's input
                self.input.check(crops)
                batches.append(crops)
                owners.append(index)
            except Exception as error:  # noqa: BLE001 - reported to that request's client
                responses[index] = _error(f"bad request: {error}")

        if batches:
            try:
                batch = batches[0] if len(batches) == 1 else np.concatenate(batches)
                rows = self.session.run([self.onnx_output], {self.onnx_input: batch})[0]
                rows = np.ascontiguousarray(rows, dtype=self.output.dtype)
                if rows.shape[0] != batch.shape[0]:
                    raise RuntimeError(f"model returned {rows.shape[0]} rows for {batch.shape[0]} crops")
                self.output.check(rows)
                ends = np.cumsum([crops.shape[0] for crops in batches])
                for index, part in zip(owners, np.split(rows, ends[:-1])):
                    responses[index] = pb_utils.InferenceResponse(
                        output_tensors=[_output_tensor(self.output.name, part)]
                    )
            except Exception as error:  # noqa: BLE001 - the whole batch failed
                for index in owners:
                    responses[index] = _error(f"onnxruntime failed: {error}")
        return responses

    def finalize(self) -> None:
        self.session = None


def _output_tensor(name: str, array: np.ndarray):
    """``pb_utils.Tensor.from_dlpack(name, array)``, then the consumed capsule renamed as the
    DLPack protocol says, so that numpy's destructor leaves it alone quietly (see above)."""
    capsule = array.__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    if _capsule_get_name(capsule) != b"dltensor":  # taken over by the stub
        _capsule_set_name(capsule, _USED_DLTENSOR)
    return tensor


def _error(message: str):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
