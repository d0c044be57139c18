"""Saving and loading state dicts (name -> numpy array) as .npz or .safetensors files, the
format chosen by the file name, and whole models: ``save(model, path)`` writes a Linear's,
a Sequential's or a lone module's structure beside its state dict, which ``load_model``
reads back into the same model. Both formats hold the same dtypes, bit for bit:
float64, float32, float16, bfloat16 (``ml_dtypes.bfloat16``), int64/32/16/8,
uint64/32/16/8 and bool.

The structure is versioned JSON (fastlinear._structure states it: each module's kind
and settings, nested Sequentials) in the file's own metadata: the .safetensors header's
``__metadata__`` entry ``"fastlinear"`` (a string, as the format wants), and in .npz the
reserved member ``__fastlinear__``, a 0-d str array. It is data, never pickle: nothing in
a file is imported or executed.

.safetensors is read and written here, without the safetensors package: 8 bytes of
little-endian header length N, N bytes of UTF-8 JSON
``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__":
{str: str}}``, then the data buffer (offsets relative to its start; each tensor C-order,
little-endian). Files written by ``safetensors.torch.save_file`` load here (bf16 as
bfloat16, f16 as float16), and files written here load there. Every header is checked
against the real file size before any tensor is allocated or read; a malformed file
raises ValueError naming the file and the problem.

.npz is numpy's zip of .npy members, read with ``allow_pickle=False``. numpy has no
bfloat16, so a bfloat16 array is stored as its uint16 bit patterns, and the reserved
member ``__fastlinear_bfloat16__`` (a 1-d str array) lists the names of those arrays;
``load`` views them back as bfloat16. No user key may use those reserved names.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import zipfile
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np

from . import _structure

if TYPE_CHECKING:
    from ._typing import Module, StrPath, SupportsStateDict

__all__ = ["save", "load", "load_model"]

_DTYPES = {  # safetensors code -> numpy dtype (little-endian)
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"), "U64": np.dtype("<u8"), "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"), "U8": np.dtype("u1"), "BOOL": np.dtype(bool),
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}
_BF16 = _DTYPES["BF16"]
_NPZ_BF16_KEY = "__fastlinear_bfloat16__"
_NPZ_STRUCTURE_KEY = "__fastlinear__"
_METADATA_KEY = "fastlinear"  # the structure's entry in a .safetensors __metadata__
_MAX_HEADER = 100 * 1024 * 1024


def _format(path):
    name = str(path)
    if name.endswith(".npz"):
        return "npz"
    if name.endswith(".safetensors"):
        return "safetensors"
    raise ValueError(f"unknown file type {name!r}: expected a .npz or .safetensors name")


def _to_numpy(name, value):
    """A C-contiguous little-endian numpy array of a supported dtype, from a numpy array
    or a torch tensor (torch's bfloat16 goes through its int16 bits)."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            import torch
            value = value.view(torch.int16).numpy().view(_BF16)
        else:
            value = value.numpy()
    array = np.asarray(value)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    if dtype not in _CODES:
        raise TypeError(f"cannot save {name!r}: dtype {array.dtype} is not one of "
                        f"float64/32/16, bfloat16, int64/32/16/8, uint64/32/16/8, bool")
    return np.ascontiguousarray(array, dtype=dtype).reshape(array.shape)


def _state(module_or_dict):
    state = (module_or_dict if isinstance(module_or_dict, dict)
             else module_or_dict.state_dict())
    for name in state:
        if not isinstance(name, str):
            raise TypeError(f"state dict keys must be str, got {name!r}")
    return {name: _to_numpy(name, value) for name, value in state.items()}


def _bytes(array):
    """The array's bytes, C order, without a copy (0-d and empty arrays included)."""
    return memoryview(array.reshape(-1).view(np.uint8))


def save(module_or_dict: dict[str, Any] | SupportsStateDict, path: StrPath) -> None:
    """Writes a state dict (a dict of numpy arrays or torch tensors, or any object with
    state_dict(), such as a torch module) to a .npz or .safetensors file; for a
    fastlinear Linear, Sequential or other module, its structure too, so that
    load_model(path) gives the model back."""
    kind = _format(path)
    structure = _structure.describe(module_or_dict)
    state = _state(module_or_dict)
    for reserved in (_NPZ_BF16_KEY, _NPZ_STRUCTURE_KEY) if kind == "npz" else (
            "__metadata__",):
        if reserved in state:
            raise ValueError(f"the key {reserved!r} is reserved by the {kind} format")
    if kind == "npz":
        _save_npz(state, path, structure)
    else:
        _save_safetensors(state, path, structure)


def load(path: StrPath) -> dict[str, np.ndarray]:
    """The state dict in a .npz or .safetensors file, as a dict name -> numpy array."""
    if _format(path) == "npz":
        return _load_npz(path)[0]
    return _load_safetensors(path)


def load_model(path: StrPath) -> Module:
    """The Linear, Sequential or other module that save(model, path) wrote, as it was:
    the same settings and the same stored weights, so the same outputs, bit for bit.
    A file without a structure (a state dict saved alone, or by torch) raises
    ValueError saying what to do instead; so does a structure that is malformed, of
    an unknown version, or that does not match the file's tensors (TypeError: a setting
    of the wrong type), each checked before anything is allocated for it."""
    name = str(path)
    if _format(path) == "npz":
        state, text = _load_npz(path)
        with _about(name):
            structure = _read_structure(text)
            _structure.check_tensors(structure, state)
    else:
        with open(path, "rb") as f:
            tensors, metadata = _read_header(f, name)
            with _about(name):
                structure = _read_structure(metadata.get(_METADATA_KEY))
                # Shapes and types checked before any tensor is read, on stand-ins of
                # each shape that take no memory.
                _structure.check_tensors(structure, {
                    t[0]: np.broadcast_to(np.zeros((), t[1]), t[2]) for t in tensors})
            state = _read_tensors(f, tensors, name)
    with _about(name):
        return _structure.build(structure, state)


@contextlib.contextmanager
def _about(name):
    """Errors of a model's structure as ValueError (TypeError for a setting of the
    wrong type) naming the file."""
    try:
        yield
    except (KeyError, TypeError, ValueError) as exc:
        message = exc.args[0] if exc.args else type(exc).__name__
        raise (TypeError if isinstance(exc, TypeError) else ValueError)(
            f"{name!r}: {message}") from None


def _read_structure(text):
    if text is None:
        raise ValueError(
            "it holds a state dict without a model structure (saved from a dict, or by "
            "torch): build the model and load it with model.load_state_dict(fl.load(path)) "
            "(torch modules: fl.Sequential.from_torch); fl.save(model, path) of a "
            "fastlinear model writes the structure that fl.load_model reads")
    return _structure.read(text)


def _save_npz(state, path, structure=None):
    bf16 = [name for name, array in state.items() if array.dtype == _BF16]
    members = {name: array.view(np.uint16) if array.dtype == _BF16 else array
               for name, array in state.items()}
    if bf16:
        members[_NPZ_BF16_KEY] = np.array(bf16, dtype=str)
    if structure is not None:
        members[_NPZ_STRUCTURE_KEY] = np.array(structure, dtype=str)  # 0-d
    # Written member by member, like np.savez, whose keyword arguments would collide
    # with keys such as "file" or "allow_pickle".
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in members.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _load_npz(path):
    """(state dict, the structure's text or None)."""
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single .npy array, not a .npz archive")
        with npz:
            state = {name: npz[name] for name in npz.files}
    except (ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{str(path)!r}: not a valid .npz file: {exc}") from None
    bf16 = state.pop(_NPZ_BF16_KEY, None)
    if bf16 is not None:
        if bf16.ndim != 1 or bf16.dtype.kind != "U":
            raise ValueError(f"{str(path)!r}: {_NPZ_BF16_KEY} must be a 1-d str array")
        for name in bf16.tolist():
            if name not in state or state[name].dtype != np.uint16:
                raise ValueError(f"{str(path)!r}: {_NPZ_BF16_KEY} lists {name!r}, which "
                                 f"is not a uint16 array in the file")
            state[name] = state[name].view(_BF16)
    structure = state.pop(_NPZ_STRUCTURE_KEY, None)
    if structure is not None:
        if structure.ndim != 0 or structure.dtype.kind != "U":
            raise ValueError(f"{str(path)!r}: {_NPZ_STRUCTURE_KEY} must be a 0-d str array")
        structure = str(structure)
    return state, structure


def _save_safetensors(state, path, structure=None):
    header, offset = {}, 0
    if structure is not None:
        header["__metadata__"] = {_METADATA_KEY: structure}
    for name, array in state.items():
        header[name] = {"dtype": _CODES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the buffer starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for array in state.values():
            f.write(_bytes(array))


def _no_duplicates(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_header(f, size):
    """The checked header: ([(name, dtype, shape, begin, end)] with offsets from the file
    start, its __metadata__). Raises ValueError (the message without the file name) on
    any flaw."""
    if size < 8:
        raise ValueError(f"{size} bytes is too short for the 8-byte header length")
    n = int.from_bytes(f.read(8), "little")
    if n > size - 8:
        raise ValueError(f"header length {n} exceeds the {size - 8} bytes after it")
    if n > _MAX_HEADER:
        raise ValueError(f"header length {n} exceeds the {_MAX_HEADER}-byte limit")
    try:
        header = json.loads(f.read(n).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"header is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not (isinstance(metadata, dict)
            and all(isinstance(v, str) for v in metadata.values())):
        raise ValueError("__metadata__ is not an object of strings")
    start, buffer = 8 + n, size - 8 - n
    tensors = []
    for name, entry in header.items():
        if not (isinstance(entry, dict)
                and set(entry) == {"dtype", "shape", "data_offsets"}):
            raise ValueError(f"tensor {name!r}: expected exactly the keys dtype, shape "
                             f"and data_offsets, got {entry!r}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPES:
            raise ValueError(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
            raise ValueError(f"tensor {name!r}: shape {shape!r} is not a list of "
                             f"non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(_is_int(o) for o in offsets)):
            raise ValueError(f"tensor {name!r}: data_offsets {offsets!r} is not a pair "
                             f"of integers")
        begin, end = offsets
        if not 0 <= begin <= end:
            raise ValueError(f"tensor {name!r}: data_offsets [{begin}, {end}] are "
                             f"negative or end before they begin")
        if end > buffer:
            raise ValueError(f"tensor {name!r}: data_offsets [{begin}, {end}] reach past "
                             f"the {buffer}-byte data buffer (truncated file?)")
        nbytes = math.prod(shape) * _DTYPES[dtype].itemsize  # Python ints: no overflow
        if end - begin != nbytes:
            raise ValueError(f"tensor {name!r}: {end - begin} bytes at [{begin}, {end}], "
                             f"but shape {shape} of {dtype} needs {nbytes}")
        tensors.append((name, _DTYPES[dtype], tuple(shape), start + begin, start + end))
    previous = None
    for t in sorted(tensors, key=lambda t: (t[3], t[4])):
        if previous is not None and t[3] < previous[4]:
            raise ValueError(f"tensors {previous[0]!r} and {t[0]!r} overlap")
        if t[4] > t[3]:  # empty tensors overlap nothing
            previous = t
    return tensors, metadata


def _load_safetensors(path):
    with open(path, "rb") as f:
        return _read_tensors(f, _read_header(f, str(path))[0], str(path))


def _read_header(f, name):
    try:
        return _parse_header(f, os.fstat(f.fileno()).st_size)
    except ValueError as exc:
        raise ValueError(f"{name!r}: malformed safetensors file: {exc}") from None


def _read_tensors(f, tensors, name):
    state = {}
    for key, dtype, shape, begin, end in tensors:
        array = np.empty(shape, dtype)
        f.seek(begin)
        if f.readinto(_bytes(array)) != end - begin:
            raise ValueError(f"{name!r}: malformed safetensors file: tensor {key!r} is "
                             f"truncated")
        state[key] = array
    return state
