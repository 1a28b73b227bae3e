"""A GGUF file's header, read fast: metadata values and the tensor index over one memory map.

`gguf.GGUFReader` builds a numpy memmap view for every scalar of every metadata array, which costs
seconds for a 50k-262k token vocabulary; start-up should not. This reader decodes the header
with `struct` in one pass (string arrays as a plain loop, numeric arrays as one `frombuffer`),
and gives each tensor a uint8 view into the shared map, so nothing is copied or converted.

It offers the part of GGUFReader's interface the loaders use: `fields[key].contents()`, and
`tensors` with `name`, `tensor_type`, `shape` (GGUF order: fastest dimension first),
`n_elements` and `data`.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF value type id -> (struct format, size) for the fixed-size ones
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}
_NUMPY: dict[int, str] = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4",
                          7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ValueError):
    """The bytes are not a GGUF file this reader understands (the message says why)."""


@dataclass(frozen=True)
class Field:
    """One metadata key and its decoded value."""

    name: str
    value: Any

    def contents(self) -> Any:
        """The value as Python: str, int, float, bool, or a list of them."""
        return self.value


@dataclass(frozen=True)
class TensorInfo:
    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF order: the contiguous (column) dimension first
    n_elements: int
    offset: int  # of the first byte, from the start of the file
    data: np.ndarray  # uint8[n_bytes], a view into the file's memory map


class _Cursor:
    """Little-endian reads from the front of a buffer."""

    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise GGUFFormatError(f"header runs past the end of the file (at byte {self.pos}, "
                                  f"{n} more wanted, {len(self.buf)} in all)")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, kind: int) -> Any:
        fmt, size = _SCALARS[kind]
        return struct.unpack(fmt, self.take(size))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self) -> str:
        return bytes(self.take(self.u64())).decode("utf-8", errors="replace")

    def strings(self, count: int) -> list[str]:
        buf, pos, end = self.buf, self.pos, len(self.buf)
        out = []
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(count):
            if pos + 8 > end:
                raise GGUFFormatError("a string array runs past the end of the file")
            (n,) = unpack(buf, pos)
            pos += 8
            if pos + n > end:
                raise GGUFFormatError("a string array runs past the end of the file")
            out.append(str(buf[pos:pos + n], "utf-8", "replace"))
            pos += n
        self.pos = pos
        return out

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(kind)
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.u32(), self.u64()
            if item_kind in _NUMPY:
                size = _SCALARS[item_kind][1]
                return np.frombuffer(self.take(count * size), dtype=_NUMPY[item_kind]).tolist()
            if item_kind == _STRING:
                return self.strings(count)
            return [self.value(item_kind) for _ in range(count)]
        raise GGUFFormatError(f"unknown metadata value type {kind} at byte {self.pos}")


class GGUFFile:
    """A GGUF file opened read-only and memory-mapped; raises GGUFFormatError on bad bytes."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 24:
                raise GGUFFormatError(f"{size} bytes is too short for a GGUF header")
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(self._map)
        cur = _Cursor(view)
        if bytes(cur.take(4)) != GGUF_MAGIC:
            raise GGUFFormatError("bad magic number: not a GGUF file")
        self.version = cur.u32()
        if self.version not in (2, 3):
            raise GGUFFormatError(f"GGUF version {self.version} is not supported (2 and 3 are); "
                                  "a big-endian file reads as a huge version: convert it little-endian")
        n_tensors, n_fields = cur.u64(), cur.u64()
        self.fields: dict[str, Field] = {}
        for _ in range(n_fields):
            key = cur.string()
            self.fields[key] = Field(key, cur.value(cur.u32()))
        infos = [self._tensor_info(cur) for _ in range(n_tensors)]
        alignment = int(self.fields["general.alignment"].value) if "general.alignment" in self.fields \
            else DEFAULT_ALIGNMENT
        if alignment <= 0 or alignment & (alignment - 1):
            raise GGUFFormatError(f"general.alignment {alignment} is not a power of two")
        data_start = -(-cur.pos // alignment) * alignment
        whole = np.frombuffer(self._map, dtype=np.uint8)
        self.tensors: list[TensorInfo] = []
        for name, dims, ttype, offset in infos:
            nbytes = _tensor_bytes(name, dims, ttype)
            start = data_start + offset
            if start + nbytes > size:
                raise GGUFFormatError(f"tensor {name!r} ({nbytes} bytes at {start}) runs past the end "
                                      f"of the file ({size} bytes): the file is truncated")
            self.tensors.append(TensorInfo(name, ttype, dims, int(np.prod(dims)), start,
                                           whole[start:start + nbytes]))

    @staticmethod
    def _tensor_info(cur: _Cursor) -> tuple[str, tuple[int, ...], GGMLQuantizationType, int]:
        name = cur.string()
        n_dims = cur.u32()
        if n_dims > 8:
            raise GGUFFormatError(f"tensor {name!r} claims {n_dims} dimensions")
        dims = tuple(cur.u64() for _ in range(n_dims))
        raw_type = cur.u32()
        try:
            ttype = GGMLQuantizationType(raw_type)
        except ValueError:
            raise GGUFFormatError(f"tensor {name!r} has unknown GGML type id {raw_type}") from None
        return name, dims, ttype, cur.u64()


def _tensor_bytes(name: str, dims: tuple[int, ...], ttype: GGMLQuantizationType) -> int:
    block, block_bytes = GGML_QUANT_SIZES[ttype]
    n = int(np.prod(dims)) if dims else 1
    if dims and dims[0] % block:
        raise GGUFFormatError(f"tensor {name!r}: {dims[0]} columns is not a multiple of "
                              f"{ttype.name}'s {block}-element block")
    return n // block * block_bytes
