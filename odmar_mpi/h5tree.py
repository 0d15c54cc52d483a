"""Write and read nested Python state (dicts, lists, tensors, arrays, scalars) as an HDF5 tree.

Used for checkpoints: torch state dicts, optimiser states and RNG states become groups,
datasets and attributes, so a checkpoint is inspectable with any HDF5 tool and holds
no pickled objects. Round-trips are exact (tensors keep dtype; integers of any size survive).

Every dataset carries the CRC32 (zlib.crc32) of its stored bytes in the attribute `crc32`:
for arrays and tensors the raw C-order bytes of the stored array, for JSON scalars the UTF-8
text. `read_tree(..., verify=True)` recomputes it on what it reads and raises ChecksumMismatch
naming the dataset, so altered values never load silently.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import h5py
import numpy as np
import torch

_KIND = "kind"
CHECKSUM = "crc32"  # dataset attribute: zlib.crc32 of the stored bytes, as uint32


class ChecksumMismatch(ValueError):
    """A dataset's bytes do not match the checksum stored with it (or it has none where one is required)."""

    def __init__(self, dataset: str, logical: str, stored: int | None, computed: int) -> None:
        self.dataset, self.logical, self.stored, self.computed = dataset, logical, stored, computed
        if stored is None:
            problem = "has no crc32 checksum attribute"
        else:
            problem = f"does not match its CRC32 checksum (stored {stored:#010x}, read {computed:#010x})"
        super().__init__(f"dataset {dataset} ({logical}) {problem}")


def checksum(value: Any) -> int:
    """CRC32 of the bytes of a value as stored: an array's raw C-order bytes, a string's UTF-8, bytes as they are."""
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return zlib.crc32(value)
    array = np.ascontiguousarray(value)  # no copy when it already is (the usual case)
    return zlib.crc32(array.reshape(-1).view(np.uint8)) if array.size else 0


def _store(group: h5py.Group, name: str, data: Any, stored_bytes: Any) -> h5py.Dataset:
    dset = group.create_dataset(name, data=data)
    dset.attrs[CHECKSUM] = np.uint32(checksum(stored_bytes))
    return dset


def write_tree(group: h5py.Group, name: str, obj: Any) -> None:
    """Store `obj` under `group[name]`; every dataset gets its `crc32` attribute."""
    if isinstance(obj, torch.Tensor):
        data = obj.detach().cpu()
        dtype = str(data.dtype).removeprefix("torch.")
        if data.dtype == torch.bfloat16:
            data = data.view(torch.int16)
        array = data.numpy()
        dset = _store(group, name, array, array)
        dset.attrs[_KIND] = "tensor"
        dset.attrs["dtype"] = dtype
    elif isinstance(obj, np.ndarray):
        _store(group, name, obj, obj).attrs[_KIND] = "ndarray"
    elif isinstance(obj, dict):
        sub = group.create_group(name)
        sub.attrs[_KIND] = "dict"
        keys = list(obj)
        sub.attrs["keys"] = json.dumps([[type(k).__name__, k] for k in keys])
        for i, key in enumerate(keys):
            write_tree(sub, str(i), obj[key])
    elif isinstance(obj, (list, tuple)):
        sub = group.create_group(name)
        sub.attrs[_KIND] = type(obj).__name__
        sub.attrs["length"] = len(obj)
        for i, item in enumerate(obj):
            write_tree(sub, str(i), item)
    elif obj is None or isinstance(obj, (bool, int, float, str, np.integer, np.floating)):
        value = obj.item() if isinstance(obj, (np.integer, np.floating)) else obj
        # JSON keeps bool/int/float/str/None apart and integers of any size (PCG64 states are 128-bit).
        text = json.dumps(value)
        _store(group, name, text, text).attrs[_KIND] = "json"
    else:
        raise TypeError(f"cannot store {type(obj).__name__} at {group.name}/{name} in a checkpoint")


def _verified(node: h5py.Dataset, value: Any, verify: bool) -> Any:
    if verify:
        stored = node.attrs.get(CHECKSUM)
        computed = checksum(value)
        if stored is None or int(stored) != computed:
            raise ChecksumMismatch(node.name, logical_path(node), None if stored is None else int(stored), computed)
    return value


def read_tree(node: h5py.Group | h5py.Dataset, verify: bool = False) -> Any:
    """Inverse of write_tree. With verify, every dataset's bytes must match its `crc32` (else ChecksumMismatch)."""
    kind = node.attrs[_KIND]
    if kind == "tensor":
        dtype = getattr(torch, node.attrs["dtype"])
        data = torch.from_numpy(_verified(node, np.asarray(node[()]), verify))  # node[()] is a fresh array
        return data.view(dtype) if dtype == torch.bfloat16 else data.to(dtype)
    if kind == "ndarray":
        return _verified(node, np.asarray(node[()]), verify)
    if kind == "json":
        raw = _verified(node, node[()], verify)
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    if kind == "dict":
        keys = json.loads(node.attrs["keys"])
        return {
            (int(k) if t == "int" else k): read_tree(node[str(i)], verify) for i, (t, k) in enumerate(keys)
        }
    items = [read_tree(node[str(i)], verify) for i in range(int(node.attrs["length"]))]
    return tuple(items) if kind == "tuple" else items


def logical_path(node: h5py.Group | h5py.Dataset) -> str:
    """A node's place in the Python state, e.g. state['real']['data'] for /state/7/3 (dict keys from the parents)."""
    names = [part for part in node.name.split("/") if part]
    if not names:
        return "/"
    text, current = names[0], node.file[names[0]]
    for part in names[1:]:
        label = part
        try:
            if current.attrs.get(_KIND) == "dict":
                _, key = json.loads(current.attrs["keys"])[int(part)]
                label = repr(key)
        except (KeyError, ValueError, IndexError, TypeError):
            pass  # a damaged parent: keep the HDF5 name
        text += f"[{label}]"
        current = current[part]
    return text
