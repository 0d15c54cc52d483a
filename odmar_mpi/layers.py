"""Network building blocks shared by the world models (`model/`) and the policies (`policy/`); torch only.

MAMBA's networks read features [z, h] whose z is a one-hot sample of C categoricals with K classes each
(32 x 32 at MAMBA's sizes: 1024 of 1280 inputs, all zeros but 32). `CategoricalLinear` is their first
layer: it takes z either one-hot (a matrix product, through which straight-through gradients flow) or
as class indices, where the product becomes a sum of one weight row per categorical and the
multiplications by zero are skipped (docs/architecture.md, "MAMBA": compact features).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor


class _GatherRows(torch.autograd.Function):
    """sum over groups g of weight[index[:, g]] (times present[:, g]): F.embedding_bag's forward, with a weight
    gradient of one index_add_ per group (on CPU 2-3x faster than embedding_bag's own, which sorts the indices)."""

    @staticmethod
    def forward(ctx: Any, index: Tensor, weight: Tensor, present: Tensor | None) -> Tensor:
        ctx.save_for_backward(index, present)
        ctx.rows = weight.shape[0]
        return F.embedding_bag(index, weight, mode="sum", per_sample_weights=present)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor | None, None]:
        if not ctx.needs_input_grad[1]:
            return None, None, None
        index, present = ctx.saved_tensors
        weight_grad = grad.new_zeros(ctx.rows, grad.shape[-1])
        for group in range(index.shape[1]):
            rows = grad if present is None else grad * present[:, group:group + 1]
            weight_grad.index_add_(0, index[:, group], rows)
        return None, weight_grad, None


class CategoricalLinear(nn.Module):
    """y = W x + b for x = [one-hot groups | dense part]: group g has `classes[g]` classes (one-hot, or the zero
    vector for "none"), then `dense` real values. Two layouts of x, told apart by their width:

    - one-hot, width sum(classes) + dense: F.linear with the whole matrix (exactly an nn.Linear);
    - indexed, width len(classes) + dense: each group's class index as a float (-1 = none where `optional`),
      then the dense part: one gathered weight row per group, summed (F.embedding_bag), plus the dense product.

    The two agree to float32 round-off (the sums run in another order). No gradient reaches the indices.
    """

    def __init__(self, classes: Sequence[int], dense: int, out_features: int, optional: bool = False) -> None:
        """`optional`: a group may hold no class (index -1) in the indexed layout."""
        super().__init__()
        self.classes, self.dense, self.out_features = tuple(int(c) for c in classes), int(dense), int(out_features)
        self.optional = optional
        self.onehot_width = sum(self.classes)
        self.in_features = self.onehot_width + self.dense
        # row c of weight_onehot is the column of class c in the whole matrix: what embedding_bag gathers
        self.weight_onehot = nn.Parameter(torch.empty(self.onehot_width, out_features))
        self.weight_dense = nn.Parameter(torch.empty(out_features, self.dense))
        self.bias = nn.Parameter(torch.empty(out_features))
        starts = torch.tensor([0, *self.classes[:-1]]).cumsum(0)
        self.register_buffer("offsets", starts, persistent=False)
        self.init_weight(lambda w: nn.init.kaiming_uniform_(w, a=5 ** 0.5))  # nn.Linear's default
        bound = 1 / self.in_features ** 0.5
        nn.init.uniform_(self.bias, -bound, bound)

    @property
    def weight(self) -> Tensor:
        """The whole (out, sum(classes) + dense) matrix of the one-hot layout."""
        return torch.cat([self.weight_onehot.t(), self.weight_dense], 1)

    def init_weight(self, init: Callable[[Tensor], Any]) -> None:
        """Initialise the whole matrix with `init` (e.g. nn.init.xavier_uniform_), as one nn.Linear's would be."""
        whole = torch.empty(self.out_features, self.in_features, device=self.weight_dense.device)
        init(whole)
        with torch.no_grad():
            self.weight_onehot.copy_(whole[:, :self.onehot_width].t())
            self.weight_dense.copy_(whole[:, self.onehot_width:])

    def forward(self, x: Tensor) -> Tensor:
        """x (..., sum(classes) + dense) one-hot or (..., len(classes) + dense) indexed -> (..., out_features)."""
        groups = len(self.classes)
        if x.shape[-1] == self.in_features:
            return F.linear(x, self.weight, self.bias)
        if x.shape[-1] != groups + self.dense:
            raise ValueError(f"CategoricalLinear takes {self.in_features} (one-hot) or {groups + self.dense} "
                             f"(indexed) inputs, got {x.shape[-1]}")
        indices = x[..., :groups].long()
        flat = (indices.clamp(min=0) + self.offsets).reshape(-1, groups)
        # "none" (-1) adds nothing
        present = (indices >= 0).reshape(-1, groups).to(self.weight_onehot.dtype) if self.optional else None
        gathered = _GatherRows.apply(flat, self.weight_onehot, present)
        return gathered.view(*x.shape[:-1], self.out_features) + F.linear(x[..., groups:], self.weight_dense, self.bias)


def initialise(module: nn.Module, init: Callable[[Tensor], Any]) -> None:
    """Apply `init` to every weight matrix of `module` (parameters with >= 2 dimensions), a CategoricalLinear's
    as one whole matrix, in the order the parameters are registered."""
    for child in module.modules():
        if isinstance(child, CategoricalLinear):
            child.init_weight(init)
        else:
            for parameter in child.parameters(recurse=False):
                if parameter.dim() >= 2:
                    init(parameter)


def first_layer(in_features: int, out_features: int, classes: Sequence[int] = ()) -> nn.Module:
    """The input layer of a network reading features: a CategoricalLinear when the features begin with one-hot
    groups of `classes` (`in_features` is then the indexed width, len(classes) + dense), else an nn.Linear."""
    if classes:
        return CategoricalLinear(classes, in_features - len(classes), out_features)
    return nn.Linear(in_features, out_features)
