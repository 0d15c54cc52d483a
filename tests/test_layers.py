"""odmar_mpi/layers.py: a linear layer over [one-hot groups | dense] read one-hot or by class index.

Tolerance: the indexed layout sums the same float32 products in another order (one gathered row per group,
then the dense product), so the two agree to a few float32 spacings of outputs of O(1): 1e-5.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from odmar_mpi.layers import CategoricalLinear, first_layer, initialise

CLASSES, DENSE, OUT = (5, 4, 4, 4), 3, 7
ROUND_OFF = 1e-5


def inputs(rows: int, seed: int = 0, none: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(one-hot layout (rows, 17 + 3), indexed layout (rows, 4 + 3)) of the same random inputs; with `none`, some
    groups hold no class (index -1, the zero vector)."""
    g = torch.Generator().manual_seed(seed)
    indices = torch.stack([torch.randint(0, c, (rows,), generator=g) for c in CLASSES], -1)
    if none:
        indices[::3, 0] = -1
        indices[1::4, 2] = -1
    dense = torch.randn(rows, DENSE, generator=g)
    onehot = torch.cat([F.one_hot(indices[:, k].clamp(min=0), c) * (indices[:, k:k + 1] >= 0)
                        for k, c in enumerate(CLASSES)], -1).float()
    return torch.cat([onehot, dense], -1), torch.cat([indices.float(), dense], -1)


@pytest.mark.parametrize("none", [False, True])
def test_indexed_input_gives_the_one_hot_product(none):
    layer = CategoricalLinear(CLASSES, DENSE, OUT, optional=True)
    onehot, indexed = inputs(50, none=none)
    expected = onehot @ layer.weight.T + layer.bias  # the matrix product written out
    torch.testing.assert_close(layer(onehot), expected, atol=ROUND_OFF, rtol=0)
    torch.testing.assert_close(layer(indexed), expected, atol=ROUND_OFF, rtol=0)
    assert layer(indexed).shape == (50, OUT)
    torch.testing.assert_close(layer(indexed.view(5, 10, -1)), expected.view(5, 10, OUT), atol=ROUND_OFF, rtol=0)


def test_both_layouts_give_the_same_weight_gradients_and_one_hot_inputs_get_theirs():
    onehot, indexed = inputs(40, seed=1, none=True)
    grads = {}
    for name, x in (("onehot", onehot.clone().requires_grad_()), ("indexed", indexed)):
        torch.manual_seed(0)  # the same weights and bias in both
        layer = CategoricalLinear(CLASSES, DENSE, OUT, optional=True)
        (layer(x) ** 2).sum().backward()
        grads[name] = [p.grad for p in layer.parameters()]
        if name == "onehot":
            assert x.grad is not None and x.grad.abs().sum() > 0  # straight-through samples need this gradient
    for a, b in zip(grads["onehot"], grads["indexed"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_init_weight_initialises_the_whole_matrix_as_one_linear_layer():
    layer = CategoricalLinear((32,) * 32, 256, 256)
    layer.init_weight(torch.nn.init.orthogonal_)
    whole = layer.weight
    torch.testing.assert_close(whole @ whole.T, torch.eye(256), atol=1e-4, rtol=0)  # orthonormal rows of 256 x 1280
    torch.nn.init.xavier_uniform_(layer.weight_dense)  # (a part alone would get another bound)
    initialise(layer, torch.nn.init.xavier_uniform_)
    bound = (6 / (256 + 1280)) ** 0.5
    assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound


def test_wrong_width_is_refused_and_plain_inputs_get_a_linear_layer():
    layer = CategoricalLinear(CLASSES, DENSE, OUT)
    with pytest.raises(ValueError, match="takes 20 .one-hot. or 7 .indexed. inputs, got 9"):
        layer(torch.zeros(2, 9))
    assert isinstance(first_layer(6, 4), torch.nn.Linear)
    assert isinstance(first_layer(7, 4, CLASSES), CategoricalLinear) and first_layer(7, 4, CLASSES).dense == DENSE
