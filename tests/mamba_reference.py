"""MAMBA's all-agent transition written from the equations, the reference the decentralised RSSM is tested
against (in one process: tests/test_rssm.py; across MPI ranks: tests/test_mamba_mpi.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from odmar_mpi.model.rssm import WorldModel


def reference_transition(m: WorldModel, h: torch.Tensor, actions: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """MAMBA's transition for ALL agents at once, written from the equations with one attention layer:
    token_j = ReLU(W [one_hot(a_j), z_j] + b) + PE(j); one post-norm encoder layer over every agent (the
    complete graph); each agent's own row into its GRU. h (B, n, H), actions (B, n) (-1 = none), z (B, n, C K)."""
    comm, layer, cell = m.rssm.comm, m.rssm.comm.layers[0], m.rssm.cell
    n, width, heads = h.shape[1], m.config.model_hidden, m.config.comm_heads
    action_hot = F.one_hot(actions.clamp(min=0), m.n_actions).float() * (actions >= 0).unsqueeze(-1)
    linear = comm.token[0]
    tokens = torch.relu(torch.cat([action_hot, z], -1) @ linear.weight.T + linear.bias)
    j = torch.arange(width)
    angle = torch.arange(n).double()[:, None] / 10000.0 ** (2 * (j // 2) / width).double()
    tokens = tokens + torch.where(j % 2 == 0, angle.sin(), angle.cos()).float()
    w_q, w_k, w_v = layer.in_proj.weight.split(width)
    b_q, b_k, b_v = layer.in_proj.bias.split(width)
    dh = width // heads
    mixed = []
    for head in range(heads):
        part = slice(head * dh, (head + 1) * dh)
        q = tokens @ w_q[part].T + b_q[part]
        k = tokens @ w_k[part].T + b_k[part]
        v = tokens @ w_v[part].T + b_v[part]
        mixed.append(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dh), -1) @ v)
    attended = torch.cat(mixed, -1) @ layer.out_proj.weight.T + layer.out_proj.bias

    def norm(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
        mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * ln.weight + ln.bias

    x = norm(tokens + attended, layer.norm1)
    ff = torch.relu(x @ layer.linear1.weight.T + layer.linear1.bias) @ layer.linear2.weight.T + layer.linear2.bias
    x = norm(x + ff, layer.norm2)
    gi = x @ cell.weight_ih.T + cell.bias_ih
    gh = h @ cell.weight_hh.T + cell.bias_hh
    i_r, i_z, i_n = gi.chunk(3, -1)
    h_r, h_z, h_n = gh.chunk(3, -1)
    reset, update = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    candidate = torch.tanh(i_n + reset * h_n)
    return (1 - update) * candidate + update * h
