"""Triton Python-backend model for one deltadit bundle (copied into a model repository as ``model.py``).

It runs inside Triton's python-backend stub, which imports it by path: it may only import
``triton_python_backend_utils`` (provided by the stub) and the installed ``deltadit``. The bundle folder
and the largest batch come from config.pbtxt's ``parameters`` (written by ``deltadit triton-repo``).
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's python backend


class TritonPythonModel:
    def initialize(self, args):
        from deltadit.serve.model import ServedModel

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        providers = params.get("providers") or None
        self.model = ServedModel(params["bundle"], int(params["max_images"]), providers and providers.split(","),
                                 params.get("backend") or "onnxrt")
        self.inputs = [i["name"] for i in config["input"]]

    def execute(self, requests):
        arrays = [{name: _numpy(r, name) for name in self.inputs} for r in requests]
        try:
            answers = self.model.run(arrays)
        except Exception as e:  # noqa: BLE001 - an internal error fails this batch, not the server
            answers = [e] * len(requests)
        return [_response(a, r.requested_output_names()) for a, r in zip(answers, requests)]

    def finalize(self):
        self.model = None


def _numpy(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _response(answer, wanted):
    if isinstance(answer, ValueError):  # DeltaDiTError: the request's fault (HTTP 400)
        invalid = getattr(pb_utils.TritonError, "INVALID_ARG", None)
        error = pb_utils.TritonError(str(answer)) if invalid is None else pb_utils.TritonError(str(answer), invalid)
        return pb_utils.InferenceResponse(error=error)
    if isinstance(answer, Exception):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"internal error: {type(answer).__name__}: {answer}"))
    outputs = {"image": np.stack([o.image for o in answer]),  # (rows, H, W, C) uint8
               "latents": np.stack([o.latents for o in answer]).astype(np.float32)}
    names = list(wanted) or list(outputs)
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, outputs[n]) for n in names])
