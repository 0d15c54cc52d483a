"""Write and read nested Python state (dicts, lists, tensors, arrays, scalars) as an HDF5 tree.

Used for checkpoints: torch state dicts, optimiser states and RNG states become groups,
datasets and attributes, so a checkpoint is inspectable with any HDF5 tool and holds
no pickled objects. Round-trips are exact (tensors keep dtype; integers of any size survive).
"""

from __future__ import annotations

import json
from typing import Any

import h5py
import numpy as np
import torch

_KIND = "kind"


def write_tree(group: h5py.Group, name: str, obj: Any) -> None:
    """Store `obj` under `group[name]`."""
    if isinstance(obj, torch.Tensor):
        data = obj.detach().cpu()
        dtype = str(data.dtype).removeprefix("torch.")
        if data.dtype == torch.bfloat16:
            data = data.view(torch.int16)
        dset = group.create_dataset(name, data=data.numpy())
        dset.attrs[_KIND] = "tensor"
        dset.attrs["dtype"] = dtype
    elif isinstance(obj, np.ndarray):
        group.create_dataset(name, data=obj).attrs[_KIND] = "ndarray"
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
        dset = group.create_dataset(name, data=json.dumps(value))
        dset.attrs[_KIND] = "json"
    else:
        raise TypeError(f"cannot store {type(obj).__name__} at {group.name}/{name} in a checkpoint")


def read_tree(node: h5py.Group | h5py.Dataset) -> Any:
    """Inverse of write_tree."""
    kind = node.attrs[_KIND]
    if kind == "tensor":
        dtype = getattr(torch, node.attrs["dtype"])
        data = torch.from_numpy(np.asarray(node[()]).copy())
        return data.view(dtype) if dtype == torch.bfloat16 else data.to(dtype)
    if kind == "ndarray":
        return np.asarray(node[()]).copy()
    if kind == "json":
        raw = node[()]
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    if kind == "dict":
        keys = json.loads(node.attrs["keys"])
        return {
            (int(k) if t == "int" else k): read_tree(node[str(i)]) for i, (t, k) in enumerate(keys)
        }
    items = [read_tree(node[str(i)]) for i in range(int(node.attrs["length"]))]
    return tuple(items) if kind == "tuple" else items
