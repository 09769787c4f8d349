"""A GGUF file's header (metadata and tensor table) read in one pass, tensors as memory-map views.

The gguf package's reader builds a numpy view for every part of every field: for the embedded
model's 49,152-token vocabulary and its merges that is over a million views and about 4 s on a
2-core machine, paid by every `batchllm run` and `batchllm plan` that only needs a few numbers.
Here scalars are decoded with struct, numeric arrays with one numpy view each, and string arrays
are only skipped (their length is kept; `GGUFArray.values()` decodes them on demand). Tensor data
comes back shaped as the gguf package shapes it, so its dequantizer applies unchanged.
Layout: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (little-endian files only).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 8  # ggml tensors have at most 4 dimensions; more means a damaged table

# GGUF metadata value types -> struct format of one item (strings and arrays handled apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?",
          10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9
# ggml types stored as plain numbers (the rest are quantized blocks, read as bytes)
_PLAIN_TENSOR_TYPES = {0: np.float32, 1: np.float16, 24: np.int8, 25: np.int16, 26: np.int32,
                       27: np.int64, 28: np.float64}


@dataclass(frozen=True)
class GGUFArray:
    """An array value, decoded on demand (a vocabulary need not be decoded to be counted)."""

    item_type: int
    count: int
    offset: int  # of the first item in the file
    _file: "GGUFFile"

    def __len__(self) -> int:
        return self.count

    def values(self) -> list[Any]:
        if self.item_type == _STRING:
            out, pos = [], self.offset
            for _ in range(self.count):
                text, pos = self._file._string(pos)
                out.append(text)
            return out
        if self.item_type in _NUMPY:
            return np.frombuffer(self._file.buf, _NUMPY[self.item_type], self.count, self.offset).tolist()
        raise ValueError(f"nested GGUF arrays are not supported (type {self.item_type})")


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    dims: tuple[int, ...]  # GGUF order: the fastest-varying dimension first
    ggml_type: int
    offset: int  # absolute byte offset of the data in the file


class GGUFFile:
    """The metadata (`fields`: key -> int, float, bool, str or GGUFArray) and the tensor table
    of a GGUF file; `tensor_data` maps a tensor's bytes without copying."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._map = np.memmap(self.path, mode="r")
        self.buf = memoryview(self._map)
        if bytes(self.buf[:4]) != GGUF_MAGIC:
            raise ValueError("not a GGUF file (bad magic)")
        version, tensor_count, kv_count = struct.unpack_from("<IQQ", self.buf, 4)
        if version not in SUPPORTED_VERSIONS:
            raise ValueError(f"GGUF version {version} is not supported (big-endian or too new)")
        # every entry takes at least 12 bytes: a count the file cannot hold is damage, not a loop
        for what, count in (("metadata entries", kv_count), ("tensors", tensor_count)):
            if count > len(self.buf) // 12:
                raise ValueError(f"the header claims {count:,} {what}, more than a {len(self.buf):,}-byte file holds")
        pos = 24
        self.fields: dict[str, Any] = {}
        for _ in range(kv_count):
            key, pos = self._string(pos)
            (value_type,) = struct.unpack_from("<I", self.buf, pos)
            self.fields[key], pos = self._value(value_type, pos + 4)
        self.tensors: list[GGUFTensor] = []
        table = []
        for _ in range(tensor_count):
            name, pos = self._string(pos)
            (n_dims,) = struct.unpack_from("<I", self.buf, pos)
            if n_dims > MAX_DIMS:
                raise ValueError(f"tensor {name!r} claims {n_dims} dimensions")
            dims = struct.unpack_from(f"<{n_dims}Q", self.buf, pos + 4)
            ggml_type, rel = struct.unpack_from("<IQ", self.buf, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            table.append((name, tuple(int(d) for d in dims), ggml_type, rel))
        align = int(self.fields.get("general.alignment", DEFAULT_ALIGNMENT))
        if align <= 0 or align & (align - 1):
            raise ValueError(f"bad GGUF alignment {align}")
        data_start = -(-pos // align) * align
        seen: set[str] = set()
        for name, dims, ggml_type, rel in table:
            if name in seen:
                raise ValueError(f"tensor {name!r} appears twice")
            seen.add(name)
            self.tensors.append(GGUFTensor(name, dims, ggml_type, data_start + rel))

    def _string(self, pos: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", self.buf, pos)
        start = pos + 8
        if n > len(self.buf) - start:
            raise ValueError(f"a string of {n:,} bytes at offset {pos:,} runs past the end of the file")
        return bytes(self.buf[start:start + n]).decode("utf-8", errors="replace"), start + n

    def _value(self, value_type: int, pos: int) -> tuple[Any, int]:
        if value_type in _SCALARS:
            fmt = _SCALARS[value_type]
            return struct.unpack_from(fmt, self.buf, pos)[0], pos + struct.calcsize(fmt)
        if value_type == _STRING:
            return self._string(pos)
        if value_type == _ARRAY:
            item_type, count = struct.unpack_from("<IQ", self.buf, pos)
            start = pos + 12
            if item_type in _SCALARS:
                end = start + count * struct.calcsize(_SCALARS[item_type])
                if end > len(self.buf):
                    raise ValueError(f"an array of {count:,} items at offset {pos:,} runs past the end of the file")
            elif item_type == _STRING:
                if count > (len(self.buf) - start) // 8:
                    raise ValueError(f"an array of {count:,} strings at offset {pos:,} runs past the end of the file")
                end = start
                for _ in range(count):
                    (n,) = struct.unpack_from("<Q", self.buf, end)
                    end += 8 + n
                if end > len(self.buf):
                    raise ValueError(f"an array of strings at offset {pos:,} runs past the end of the file")
            else:
                raise ValueError(f"unsupported GGUF array item type {item_type}")
            return GGUFArray(item_type, count, start, self), end
        raise ValueError(f"unknown GGUF value type {value_type}")

    def tensor_data(self, tensor: GGUFTensor) -> np.ndarray:
        """The tensor's bytes as the gguf package shapes them: plain types as [..., dims[0]] of
        their dtype, quantized ones as uint8 rows of whole blocks (what `gguf.dequantize` takes)."""
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import quant_shape_to_byte_shape

        shape = tuple(reversed(tensor.dims))
        n = int(np.prod(tensor.dims, dtype=np.int64))
        plain = _PLAIN_TENSOR_TYPES.get(tensor.ggml_type)
        if plain is not None:
            return np.frombuffer(self.buf, plain, n, tensor.offset).reshape(shape)
        qtype = GGMLQuantizationType(tensor.ggml_type)
        block, type_size = GGML_QUANT_SIZES[qtype]
        data = np.frombuffer(self.buf, np.uint8, n * type_size // block, tensor.offset)
        return data.reshape(quant_shape_to_byte_shape(shape, qtype))
