"""A `.safetensors` file memory-mapped: its tensor index and a zero-copy view of each tensor.

The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
data_offsets; `__metadata__`), then the tensors' bytes. `safetensors.safe_open` with numpy
copies each tensor into a fresh array and has no bfloat16 dtype; serving wants the bytes where
they lie (the same design as `gguf_file`), so the header is read here and every tensor is a
uint8 view into one read-only map of the file.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

# safetensors dtype -> bytes per element
DTYPE_BYTES: dict[str, int] = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                               "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_HEADER_BYTES = 100 << 20  # the format's own limit


class SafetensorsFormatError(ValueError):
    """The bytes are not a safetensors file (the message says why)."""


@dataclass(frozen=True)
class StoredTensor:
    name: str
    dtype: str  # safetensors spelling: "F32", "BF16", ...
    shape: tuple[int, ...]  # row-major, the last dimension contiguous
    data: np.ndarray  # uint8[n_bytes], a view into the file's memory map


class SafetensorsFile:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 8:
                raise SafetensorsFormatError(f"{size} bytes is too short for a safetensors header")
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        (header_len,) = struct.unpack_from("<Q", self._map, 0)
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise SafetensorsFormatError(f"header length {header_len} does not fit the file ({size} bytes)")
        try:
            header = json.loads(bytes(self._map[8:8 + header_len]))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SafetensorsFormatError(f"header is not JSON: {exc}") from exc
        if not isinstance(header, dict):
            raise SafetensorsFormatError("header is not a JSON object")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        whole = np.frombuffer(self._map, dtype=np.uint8)
        data_start = 8 + header_len
        self.tensors: dict[str, StoredTensor] = {}
        for name, entry in header.items():
            self.tensors[name] = _tensor(name, entry, whole, data_start, size)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors


def _tensor(name: str, entry: object, whole: np.ndarray, data_start: int, size: int) -> StoredTensor:
    try:
        dtype, shape = str(entry["dtype"]), tuple(int(d) for d in entry["shape"])  # type: ignore[index]
        begin, end = (int(v) for v in entry["data_offsets"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError) as exc:
        raise SafetensorsFormatError(f"tensor {name!r}: malformed header entry {entry!r}") from exc
    if dtype not in DTYPE_BYTES:
        raise SafetensorsFormatError(f"tensor {name!r}: unknown dtype {dtype!r}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPE_BYTES[dtype]
    if end - begin != nbytes or begin < 0:
        raise SafetensorsFormatError(f"tensor {name!r}: offsets [{begin}, {end}) do not hold {dtype}{list(shape)}")
    if data_start + end > size:
        raise SafetensorsFormatError(f"tensor {name!r} runs past the end of the file ({size} bytes): "
                                     "the file is truncated")
    return StoredTensor(name, dtype, shape, whole[data_start + begin:data_start + end])
