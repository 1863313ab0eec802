"""Read the metadata and tensor table of a GGUF file (llama.cpp's model format).

Only the header is read: key/value metadata and the tensor descriptions (name,
shape, type), never the tensor data, so a 40 GB file costs a few kilobytes of
reading. The layout follows the format's specification (ggml, docs/gguf.md):

    magic "GGUF" | version u32 | tensor count u64 | metadata count u64
    metadata: key (string) | value type u32 | value
    tensors:  name (string) | n_dims u32 | dims u64 x n_dims | type u32 | offset u64
    padding to `general.alignment` (default 32), then the tensor data

Strings are a u64 length and UTF-8 bytes; everything is little-endian.

Why a reader of our own and not the `gguf` package: the package needs numpy
(and memory-maps the whole file), a large run-time dependency for about a
hundred lines of header parsing. The tests write their files with the `gguf`
package, so this reader is checked against the reference writer.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

#: Bounds that tell a corrupt header from a real one before any large allocation.
_MAX_STRING_BYTES = 1 << 24
_MAX_ARRAY_ITEMS = 1 << 24
_MAX_COUNT = 1 << 20
_MAX_DIMS = 8

# GGUF metadata value types: struct format of the scalar ones.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

#: llama.cpp's `general.file_type` (enum llama_ftype): the quantisation of most tensors.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
}


class GgufError(ValueError):
    """The file is not a readable GGUF file (one line, names the file)."""


@dataclass(frozen=True)
class GgufTensor:
    name: str
    shape: tuple[int, ...]
    ggml_type: int

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class GgufHeader:
    version: int
    metadata: dict[str, Any]
    tensors: tuple[GgufTensor, ...]
    #: Where the tensor data starts; file size minus this is what the weights take.
    data_offset: int
    file_bytes: int

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    def arch_int(self, key: str) -> int | None:
        """``{architecture}.{key}`` as an int, None where absent or not a number."""
        value = self.metadata.get(f"{self.architecture}.{key}")
        if isinstance(value, list):  # per-layer head counts (some architectures): the largest
            value = max((v for v in value if isinstance(v, int)), default=None)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def file_type(self) -> str | None:
        code = self.metadata.get("general.file_type")
        if not isinstance(code, int):
            return None
        return FILE_TYPES.get(code, f"file type {code}")


class _Reader:
    def __init__(self, fh: IO[bytes], path: Path) -> None:
        self.fh = fh
        self.path = path

    def exact(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise GgufError(f"{self.path}: GGUF header is truncated (corrupt or incomplete file)")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.exact(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > _MAX_STRING_BYTES:
            raise GgufError(f"{self.path}: GGUF header has a {n}-byte string (corrupt header)")
        try:
            return self.exact(n).decode("utf-8")
        except UnicodeDecodeError:
            raise GgufError(f"{self.path}: GGUF header has a string that is not UTF-8 "
                            f"(corrupt header)") from None

    def value(self, kind: int, depth: int = 0) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY and depth < 2:
            item_kind = self.unpack("<I")
            count = self.unpack("<Q")
            if count > _MAX_ARRAY_ITEMS:
                raise GgufError(f"{self.path}: GGUF array of {count} items (corrupt header)")
            if item_kind in _SCALARS:  # one read for the whole array (vocabularies are long)
                fmt = _SCALARS[item_kind]
                size = struct.calcsize(fmt)
                data = self.exact(size * count)
                return list(struct.unpack(f"<{count}{fmt[1]}", data))
            return [self.value(item_kind, depth + 1) for _ in range(count)]
        raise GgufError(f"{self.path}: unknown GGUF value type {kind} (corrupt header or a "
                        f"newer format)")


def read_gguf(path: str | os.PathLike[str]) -> GgufHeader:
    """The header of GGUF file ``path``; GgufError (one line) where it cannot be read."""
    p = Path(path)
    try:
        size = p.stat().st_size
        fh = open(p, "rb")  # noqa: SIM115 (closed below; the reader needs the handle)
    except FileNotFoundError:
        raise GgufError(f"{p}: no such file") from None
    except OSError as exc:
        raise GgufError(f"{p}: cannot read: {exc.strerror or exc}") from None
    with fh:
        r = _Reader(fh, p)
        if fh.read(4) != MAGIC:
            raise GgufError(f"{p}: not a GGUF file (no GGUF magic at the start)")
        version = r.unpack("<I")
        if version not in (2, 3):
            raise GgufError(f"{p}: GGUF version {version} is not supported (2 and 3 are)")
        n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
        if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
            raise GgufError(f"{p}: GGUF header claims {n_tensors} tensors and {n_kv} "
                            f"metadata keys (corrupt header)")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            metadata[key] = r.value(r.unpack("<I"))
        tensors = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.unpack("<I")
            if n_dims > _MAX_DIMS:
                raise GgufError(f"{p}: tensor {name!r} has {n_dims} dimensions (corrupt header)")
            shape = tuple(r.unpack("<Q") for _ in range(n_dims))
            ggml_type = r.unpack("<I")
            r.unpack("<Q")  # offset into the data section: not needed for planning
            tensors.append(GgufTensor(name, shape, ggml_type))
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0:
            raise GgufError(f"{p}: general.alignment {alignment!r} is not a positive integer")
        end = fh.tell()
    data_offset = -(-end // alignment) * alignment
    if data_offset > size:
        raise GgufError(f"{p}: GGUF file ends before its tensor data (truncated file)")
    return GgufHeader(version, metadata, tuple(tensors), data_offset, size)
