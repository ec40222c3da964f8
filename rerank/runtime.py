"""CPU runtimes for the encoder models (cross-encoder, bi-encoder, dense retriever): torch, ONNX Runtime, OpenVINO.

``runtime: onnx`` exports the loaded transformers model once to ONNX (``torch.onnx.export``, eager attention, dynamic
batch and sequence axes) and runs it with ONNX Runtime; ``quantize: int8`` runs ONNX Runtime's dynamic int8
quantization of that export (int8 weights, activations quantized per batch), the CPU speed-up sentence-transformers'
``export_dynamic_quantized_onnx_model`` offers (per-channel int8 weights). ``runtime: openvino`` compiles the same ONNX file with OpenVINO (float
only). Exports are cached under ``<cache_root>/onnx/<key>/`` where the key hashes the model's weights (as float32),
the output exported and the input names, so a second load of the same weights reads the file instead of exporting.
The dense encoder of a left-padded model exports ``position_ids`` as an input too and feeds the mask-derived positions
torch gets, so a text embeds the same on every runtime and wherever it sits in a batch.
Both runtimes use as many threads as torch does (``torch.get_num_threads()``), so thread shares
(``OMP_NUM_THREADS``, ``--workers``) apply to them alike. The tokenisation, batching and scoring around the model are
the head's own, so only the forward pass changes: float ONNX scores equal torch's to float rounding (tests: 1e-4);
int8 scores move by more (see docs/results.md for what that does to nDCG).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from rerank.errors import ConfigError
from rerank.utils.files import hash_obj, sweep_stale, write_json

__all__ = ["QUANTIZE", "RUNTIMES", "Runner", "check_runtime", "compile_model", "hash_weights", "onnx_cache_dir"]

Runtime = Literal["torch", "onnx", "openvino"]
Quantize = Literal["none", "int8"]
RUNTIMES: tuple[str, ...] = ("torch", "onnx", "openvino")
QUANTIZE: tuple[str, ...] = ("none", "int8")
#: what each runtime needs installed (the pip extra that installs it)
_NEEDS = {"onnx": (("onnxruntime", "onnx"), "onnx"), "openvino": (("openvino", "onnx"), "openvino")}
#: model output exported per kind of model
OUTPUTS = {"sequence-classification": "logits", "feature-extraction": "last_hidden_state"}
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17
EXPORT_FORMAT = 1  # bump when the export changes, so cached files of the old one are not reused


def check_runtime(runtime: str, quantize: str, device: str | None = None, dtype: str | None = None) -> None:
    """Raise a one-line :class:`ConfigError` for an unknown runtime or quantization, a combination that does not
    exist, a device other than the CPU, or a runtime whose package is not installed."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if quantize not in QUANTIZE:
        raise ConfigError(f"quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    if runtime == "torch":
        if quantize != "none":
            raise ConfigError("quantize: int8 needs runtime: onnx (torch runs the model as it is stored)")
        return
    if quantize == "int8" and runtime != "onnx":
        raise ConfigError(f"quantize: int8 runs on runtime: onnx only, not {runtime}")
    if device is not None and not str(device).startswith("cpu"):
        raise ConfigError(f"runtime: {runtime} runs on the CPU; use runtime: torch for device {device}")
    if dtype not in (None, "auto", "float32"):
        raise ConfigError(f"runtime: {runtime} exports the float32 model; drop dtype={dtype} or use runtime: torch")
    packages, extra = _NEEDS[runtime]
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError(f"runtime: {runtime} needs {', '.join(missing)}: pip install 'rerank[{extra}]'")


def hash_weights(h: Any, model: torch.nn.Module) -> None:
    """Feed ``model``'s weights into the hash ``h``: names, shapes, and values as float32 (so the storage dtype does
    not matter)."""
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = t.detach().cpu()
        t = t.float() if t.is_floating_point() else t
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())


def onnx_cache_dir(model: torch.nn.Module, kind: str, inputs: tuple[str, ...], root: str | Path | None = None) -> Path:
    """``<cache_root>/onnx/<key>``: the key hashes the weights, the exported output, the inputs and the export
    format."""
    if root is None:
        from rerank.data.datasets import cache_root

        root = cache_root()
    h = hashlib.sha256()
    hash_weights(h, model)
    key = {"weights": h.hexdigest(), "kind": kind, "inputs": list(inputs), "opset": OPSET, "format": EXPORT_FORMAT,
           "model_type": getattr(model.config, "model_type", None)}
    return Path(root) / "onnx" / hash_obj(key)


class _Forward(torch.nn.Module):
    """The model with positional inputs and one tensor out (what ``torch.onnx.export`` traces)."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...], output: str) -> None:
        super().__init__()
        self.model, self.names, self.output = model, names, output

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(**dict(zip(self.names, inputs, strict=True))), self.output)


def _example_inputs(names: tuple[str, ...], vocab: int) -> tuple[torch.Tensor, ...]:
    """Two rows of 16 tokens, the second padded after 10, so the traced graph applies the attention mask."""
    ids = (torch.arange(32).reshape(2, 16) * 7 + 5) % max(vocab, 2)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0
    types = torch.zeros(2, 16, dtype=torch.long)
    types[:, 8:] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    made = {"input_ids": ids.long(), "attention_mask": mask, "token_type_ids": types, "position_ids": positions}
    return tuple(made[n] for n in names)


def _export(model: torch.nn.Module, kind: str, names: tuple[str, ...], path: Path) -> None:
    """Export ``model`` (a copy with eager attention, which traces the mask exactly) to ``path`` atomically."""
    net = copy.deepcopy(model).float().cpu().eval()
    if hasattr(net, "set_attn_implementation"):
        net.set_attn_implementation("eager")
    output = OUTPUTS[kind]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch"} if kind == "sequence-classification" else {0: "batch", 1: "sequence"}
    sweep_stale(path.parent, f".{path.name}.")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with torch.no_grad():
            torch.onnx.export(_Forward(net, names, output), _example_inputs(names, net.config.vocab_size), str(tmp),
                              input_names=list(names), output_names=[output], dynamic_axes=axes,
                              opset_version=OPSET, dynamo=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _quantize(src: Path, path: Path) -> None:
    """ONNX Runtime's dynamic int8 quantization of ``src`` into ``path``: signed int8 weights per output channel for
    every MatMul/Gemm with a constant weight (per-tensor weights ranked SciFact pairs worse: score correlation with
    float32 0.94 against 0.99, at the same speed)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    sweep_stale(path.parent, f".{path.name}.")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def exported_file(model: torch.nn.Module, kind: str, names: tuple[str, ...], quantize: str) -> Path:
    """The cached ONNX file of ``model`` (exported, and quantized, on first use)."""
    folder = onnx_cache_dir(model, kind, names)
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "model.onnx"
    if not fp32.is_file():
        _export(model, kind, names, fp32)
        write_json({"kind": kind, "inputs": list(names), "opset": OPSET, "torch": torch.__version__,
                    "model_type": getattr(model.config, "model_type", None)}, folder / "export.json")
    if quantize == "none":
        return fp32
    q = folder / "model.int8.onnx"
    if not q.is_file():
        _quantize(fp32, q)
    return q


class Runner:
    """A compiled model: ``runner(features)`` takes the tokenizer's int tensors and returns the exported output as a
    float32 torch tensor (logits ``[B, labels]`` or hidden states ``[B, T, H]``)."""

    def __init__(self, runtime: str, quantize: str, path: Path, names: tuple[str, ...]) -> None:
        self.runtime, self.quantize, self.path, self.names = runtime, quantize, path, names
        threads = torch.get_num_threads()
        if runtime == "onnx":
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        else:
            import openvino as ov

            # float32 as exported: on CPUs with bfloat16 units (avx512_bf16, AMX) OpenVINO would otherwise run bf16
            compiled = ov.Core().compile_model(str(path), "CPU", {
                "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                "INFERENCE_PRECISION_HINT": "f32",
            })
            self._request = compiled.create_infer_request()

    def __call__(self, features: Mapping[str, Any]) -> torch.Tensor:
        feed = {n: np.ascontiguousarray(np.asarray(features[n], dtype=np.int64)) for n in self.names}
        if self.runtime == "onnx":
            out = self._session.run(None, feed)[0]
        else:
            out = np.array(self._request.infer(feed)[0])
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "quantize": self.quantize, "file": str(self.path)}


def compile_model(model: torch.nn.Module, tokenizer: Any, kind: str, runtime: str, quantize: str,
                  position_ids: bool = False) -> Runner | None:
    """``model`` compiled for ``runtime`` (None for torch: the caller runs the model itself). ``kind``:
    ``sequence-classification`` (logits) or ``feature-extraction`` (last hidden states). ``position_ids``: the export
    takes them as an input too (the caller feeds them; an input of the cache key, so it never reuses an export
    without it)."""
    check_runtime(runtime, quantize)
    if runtime == "torch":
        return None
    if kind not in OUTPUTS:
        raise ConfigError(f"kind must be one of {', '.join(OUTPUTS)}, got {kind!r}")
    names = tuple(n for n in INPUTS if n in getattr(tokenizer, "model_input_names", ("input_ids", "attention_mask")))
    if "input_ids" not in names:
        raise ConfigError(f"runtime: {runtime} needs a tokenizer that gives input_ids (it gives {names})")
    if position_ids:
        names += ("position_ids",)
    return Runner(runtime, quantize, exported_file(model, kind, names, quantize), names)
