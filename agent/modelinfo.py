"""What a model is, for capacity planning: parameters, weight bytes, attention shape.

Three sources, all local (no network, ever):

- a Hugging Face model folder: ``config.json`` gives the architecture; the
  ``*.safetensors`` headers (an 8-byte length and a JSON table of tensors, read
  without touching the tensor data) give the exact parameter count, dtypes and
  bytes. With config.json alone, the parameter count is derived from the
  architecture (``derive_parameters``);
- a GGUF file (agent/gguf_meta.py): metadata and tensor table;
- a bare size, ``--params 7B --dtype int4``.

Formulas and sources: docs/plan.md.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ai_bottleneck.gguf_meta import GgufError, read_gguf


class ModelError(ValueError):
    """The model description cannot be read (one line, names the file or field)."""


#: Bytes per parameter of the weights in each planning dtype. int8 and int4 carry a
#: 16-bit scale per block of 32 weights (llama.cpp Q8_0 = 34 bytes / 32 weights,
#: Q4_0 = 18 bytes / 32 weights); GPTQ/AWQ with group size 128 come out a little
#: smaller, so these are the conservative side. See docs/plan.md.
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 34 / 32, "int4": 18 / 32,
}
PLAN_DTYPES = ("bf16", "fp16", "fp8", "int8", "int4")

#: Bytes per element of a safetensors dtype (header field "dtype").
SAFETENSORS_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
    "I16": 2, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I8": 1, "U8": 1,
    "BOOL": 1,
}
_SAFETENSORS_DTYPE_NAMES = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F8_E4M3": "fp8",
                            "F8_E5M2": "fp8", "I8": "int8"}
_TORCH_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32",
                 "float": "fp32"}
_MAX_SAFETENSORS_HEADER = 100 * 2**20

#: Model types whose feed-forward block has two matrices (up, down); the others
#: (Llama, Mistral, Qwen, Gemma, ...) use a gated block with three (gate, up, down).
_PLAIN_MLP = {"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "starcoder2"}

#: For a bare --params: a dense transformer has about 12 x layers x hidden^2
#: parameters (Kaplan et al. 2020), and Llama-2 keeps hidden = 128 x layers
#: (7B: 32 x 4096). Solving for layers gives the shape used for the KV cache.
_HIDDEN_PER_LAYER = 128


@dataclass(frozen=True)
class ModelInfo:
    source: str                   # what was read: a folder, a file, or "--params"
    parameters: int
    parameters_how: str           # "safetensors headers", "derived from config.json", ...
    weights_bytes: int
    weight_format: str            # bf16, int4, Q4_K_M, ...
    layers: int
    kv_heads: int
    head_dim: int
    shape_how: str                # where the attention shape came from
    architecture: str | None = None
    attention_heads: int | None = None
    max_context: int | None = None
    kv_bytes_per_element: float = 2.0

    @property
    def kv_cache_bytes_per_token(self) -> int:
        """Keys and values of every layer for one token (GQA: KV heads, not query heads)."""
        return int(2 * self.layers * self.kv_heads * self.head_dim * self.kv_bytes_per_element)

    def with_dtype(self, dtype: str) -> ModelInfo:
        """The same model with its weights stored as ``dtype`` (a planning dtype)."""
        return replace(self, weight_format=dtype,
                       weights_bytes=round(self.parameters * DTYPE_BYTES[dtype]))


# --- bare sizes ---------------------------------------------------------------------

_PARAMS = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmbt]?)\s*$", re.IGNORECASE)
_PARAM_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def parse_parameters(text: str) -> int:
    """'7B' -> 7e9, '1.5b', '350M', '7000000000'; ValueError for anything else."""
    m = _PARAMS.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a parameter count (examples: 7B, 1.5B, 350M)")
    n = round(float(m.group(1)) * _PARAM_SCALE[m.group(2).lower()])
    if not 1000 <= n <= 10**14:
        raise ValueError(f"{text!r}: a parameter count between 1K and 100T is expected")
    return n


def from_parameters(parameters: int, dtype: str) -> ModelInfo:
    """A model known only by its size: the KV cache uses a Llama-2-like dense shape
    with one KV head per query head, the upper end for its size (docs/plan.md)."""
    layers = max(1, round((parameters / (12 * _HIDDEN_PER_LAYER**2)) ** (1 / 3)))
    hidden = _HIDDEN_PER_LAYER * layers
    return ModelInfo(source="--params", parameters=parameters, parameters_how="--params",
                     weights_bytes=round(parameters * DTYPE_BYTES[dtype]), weight_format=dtype,
                     layers=layers, kv_heads=hidden // 128, head_dim=128,
                     attention_heads=hidden // 128,
                     shape_how=f"assumed: {layers} layers x {hidden} hidden, no grouped-query "
                               f"attention (give --model for the real shape)")


# --- Hugging Face folders -----------------------------------------------------------

def _int_field(cfg: dict[str, Any], names: tuple[str, ...], path: Path,
               default: int | None = None) -> int:
    for name in names:
        value = cfg.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ModelError(f"{path}: {name} is {value!r}, not a positive integer")
            return value
    if default is None:
        raise ModelError(f"{path}: no {names[0]} (is this a transformer's config.json?)")
    return default


@dataclass(frozen=True)
class Architecture:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated_mlp: bool
    tied_embeddings: bool
    experts: int
    attention_bias: bool


def read_architecture(cfg: dict[str, Any], path: Path) -> Architecture:
    if isinstance(cfg.get("text_config"), dict):  # multimodal models: the language part
        cfg = {**cfg, **cfg["text_config"]}
    hidden = _int_field(cfg, ("hidden_size", "n_embd", "d_model"), path)
    heads = _int_field(cfg, ("num_attention_heads", "n_head"), path)
    kv_default = 1 if cfg.get("multi_query") else heads
    kv_heads = _int_field(cfg, ("num_key_value_heads", "n_head_kv", "num_kv_heads"), path,
                          kv_default)
    head_dim = _int_field(cfg, ("head_dim",), path, max(1, hidden // heads))
    return Architecture(
        layers=_int_field(cfg, ("num_hidden_layers", "n_layer", "num_layers"), path),
        hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
        intermediate=_int_field(cfg, ("intermediate_size", "n_inner", "ffn_dim"), path,
                                4 * hidden),
        vocab=_int_field(cfg, ("vocab_size",), path),
        gated_mlp=cfg.get("model_type") not in _PLAIN_MLP,
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        experts=_int_field(cfg, ("num_local_experts", "num_experts", "n_routed_experts"),
                           path, 1),
        attention_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
    )


def derive_parameters(a: Architecture) -> int:
    """Parameters of a decoder-only transformer from its shape (docs/plan.md)."""
    q_out, kv_out = a.heads * a.head_dim, a.kv_heads * a.head_dim
    attention = a.hidden * q_out + 2 * a.hidden * kv_out + q_out * a.hidden
    if a.attention_bias:
        attention += q_out + 2 * kv_out
    mlp = (3 if a.gated_mlp else 2) * a.hidden * a.intermediate
    router = a.hidden * a.experts if a.experts > 1 else 0
    per_layer = attention + a.experts * mlp + router + 2 * a.hidden  # two norms
    embeddings = a.vocab * a.hidden * (1 if a.tied_embeddings else 2)
    return a.layers * per_layer + embeddings + a.hidden  # final norm


@dataclass(frozen=True)
class SafetensorsSummary:
    parameters: int
    data_bytes: int
    dtype_elements: Counter[str]


def read_safetensors_header(path: Path) -> SafetensorsSummary:
    """Count the tensors of one .safetensors file from its header alone."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) != 8:
                raise ModelError(f"{path}: too short for a safetensors file")
            (n,) = struct.unpack("<Q", prefix)
            if n > _MAX_SAFETENSORS_HEADER or n > size - 8:
                raise ModelError(f"{path}: safetensors header length {n} does not fit the "
                                 f"file ({size} bytes): corrupt header")
            raw = fh.read(n)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        table = json.loads(raw)
    except (ValueError, RecursionError):
        raise ModelError(f"{path}: safetensors header is not JSON: corrupt header") from None
    if not isinstance(table, dict):
        raise ModelError(f"{path}: safetensors header is not a JSON object: corrupt header")
    params = data = 0
    dtypes: Counter[str] = Counter()
    for name, entry in table.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            ok = (dtype in SAFETENSORS_BYTES and all(isinstance(d, int) and d >= 0 for d in shape)
                  and isinstance(begin, int) and isinstance(end, int)
                  and 0 <= begin <= end <= size - 8 - n)
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ModelError(f"{path}: tensor {name!r} has a malformed entry in the safetensors "
                             f"header: corrupt header")
        elements = math.prod(shape)
        params += elements
        data += end - begin
        dtypes[dtype] += elements
    return SafetensorsSummary(params, data, dtypes)


def _quantised_format(cfg: dict[str, Any]) -> str | None:
    q = cfg.get("quantization_config")
    if not isinstance(q, dict):
        return None
    bits = q.get("bits", q.get("w_bit"))
    if bits == 4 or q.get("load_in_4bit"):
        return "int4"
    if bits == 8 or q.get("load_in_8bit"):
        return "int8"
    if str(q.get("quant_method", "")).lower() == "fp8":
        return "fp8"
    return None


def from_hf_folder(folder: Path) -> ModelInfo:
    config_path = folder / "config.json"
    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{folder}: no config.json (expected a Hugging Face model folder "
                         f"or a .gguf file)") from None
    except OSError as exc:
        raise ModelError(f"{config_path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, RecursionError):
        raise ModelError(f"{config_path}: not valid JSON") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{config_path}: not a JSON object")
    arch = read_architecture(cfg, config_path)
    derived = derive_parameters(arch)
    dtype_name = cfg.get("torch_dtype", cfg.get("dtype"))
    fmt = _quantised_format(cfg) or _TORCH_DTYPES.get(str(dtype_name), "bf16")
    files = sorted(folder.glob("*.safetensors"))
    parameters, how, weights = derived, "derived from config.json", None
    if files:
        summaries = [read_safetensors_header(f) for f in files]
        weights = sum(s.data_bytes for s in summaries)
        counted: Counter[str] = Counter()
        for s in summaries:
            counted.update(s.dtype_elements)
        if _quantised_format(cfg) is None:
            # Quantised checkpoints pack several weights into one integer element, so
            # their element count is not the parameter count; their bytes still are exact.
            parameters = sum(s.parameters for s in summaries)
            how = f"safetensors headers ({len(files)} file{'s' if len(files) > 1 else ''})"
            top = counted.most_common(1)[0][0] if counted else None
            fmt = _SAFETENSORS_DTYPE_NAMES.get(top or "", fmt)
        else:
            how = "derived from config.json (quantised checkpoint; bytes from safetensors)"
    if weights is None:
        weights = round(derived * DTYPE_BYTES.get(fmt, 2.0))
    arch_name = cfg.get("architectures", [cfg.get("model_type")])
    return ModelInfo(
        source=str(folder), parameters=parameters, parameters_how=how, weights_bytes=weights,
        weight_format=fmt, layers=arch.layers, kv_heads=arch.kv_heads, head_dim=arch.head_dim,
        shape_how="config.json", architecture=str(arch_name[0]) if arch_name else None,
        attention_heads=arch.heads,
        max_context=cfg.get("max_position_embeddings") if isinstance(
            cfg.get("max_position_embeddings"), int) else None)


# --- GGUF files -----------------------------------------------------------------------

def from_gguf(path: Path) -> ModelInfo:
    try:
        h = read_gguf(path)
    except GgufError as exc:
        raise ModelError(str(exc)) from None
    arch = h.architecture
    if arch is None:
        raise ModelError(f"{path}: GGUF metadata has no general.architecture")
    layers = h.arch_int("block_count")
    heads = h.arch_int("attention.head_count")
    embedding = h.arch_int("embedding_length")
    if layers is None or heads is None or embedding is None:
        raise ModelError(f"{path}: GGUF metadata lacks {arch}.block_count, "
                         f"{arch}.attention.head_count or {arch}.embedding_length")
    kv_heads = h.arch_int("attention.head_count_kv") or heads
    head_dim = h.arch_int("attention.key_length") or embedding // heads
    return ModelInfo(
        source=str(path), parameters=sum(t.elements for t in h.tensors),
        parameters_how="GGUF tensor table", weights_bytes=h.file_bytes - h.data_offset,
        weight_format=h.file_type or "unknown (no general.file_type)", layers=layers,
        kv_heads=kv_heads, head_dim=head_dim, shape_how="GGUF metadata", architecture=arch,
        attention_heads=heads, max_context=h.arch_int("context_length"))


def load_model(path: str | os.PathLike[str]) -> ModelInfo:
    """A model folder or a .gguf file; ModelError (one line) for anything else."""
    p = Path(path)
    if p.is_dir():
        return from_hf_folder(p)
    if not p.exists():
        raise ModelError(f"{p}: no such file or folder")
    if p.name == "config.json":
        return from_hf_folder(p.parent)
    return from_gguf(p)
