"""MAMBA's world model for one agent (one rank), its agents talking to graph neighbours only (docs/architecture.md, "MAMBA").

MAMBA (Egorov & Shpilman 2022; jbr-ai-labs/mamba) is a Dreamer-style RSSM per agent whose transition mixes
the agents: each agent's token ReLU(Linear([a_{t-1}, z_{t-1}])) plus a sinusoid of its agent index goes
through a transformer encoder over the agent axis, and the agent's own output row drives its GRU,
h_t = GRU(h_{t-1}, comm_i). Here the block for agent i attends over agent i and its graph neighbours
only (a boolean mask), with one layer by default: then one neighbour message per step makes h_t exact
on any graph, and on a complete graph it is MAMBA's all-agent attention with one layer.

Two verbs, as in DreamerV3:
  * `RSSM.observe` walks a real sequence of agent i with the posterior, given its own embeddings and
    actions and the messages its neighbours sent each step (action, latent indices, h; `NeighbourMessages`).
  * `RSSM.imagine` walks a neighbourhood {i} + N(i) forward with the prior; every member's GRU steps
    with attention restricted to itself and those of its own neighbours inside the neighbourhood.

Approximations of the decentralised version (documented, not bugs):
  * Neighbourhood edge: in imagination, members outside {i} + N(i) are not simulated, so a neighbour
    j attends only over the members it shares with i; j's own other neighbours are missing, so j's
    imagined h drifts from what j would compute, and this reaches agent i from the second step on.
  * Stale messages: when training on replay, the neighbours' latents are those they sampled when
    acting (with their model of that time), while agent i's own latents are re-inferred.
  * With more than one communication layer, neighbour rows of the inner layers see only the
    neighbourhood (MAMBA's inner layers see every agent).

Row convention of a replayed sequence: row t holds the own observation o_t, the own action a_t taken
after seeing it, and the neighbours' messages of step t (their a_t, z_t, h_t). h_t is computed from row
t-1; a row with is_first (and row 0 of every window, as MAMBA starts windows from zero states) starts
from the zero state with no previous action or message. Reward and discount of row t are read from
[z_t, h_{t+1}] (MAMBA's alignment: h_{t+1} is a deterministic function of state t and the actions at t),
observations and the action-prediction head from [z_t, h_t].

Everything random (posterior and prior samples, dropout) draws from an explicit torch.Generator;
parameters are initialised from a seed inside a forked global RNG, which is left untouched.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from odmar_mpi.layers import CategoricalLinear, initialise
from odmar_mpi.model.settings import WorldModelConfig

Tensor = torch.Tensor


class RSSMState(NamedTuple):
    """Model state of one or more agents: h (..., deterministic), z (..., C * K) one-hot (straight-through)."""

    h: Tensor
    z: Tensor


class NeighbourMessages(NamedTuple):
    """What agent i received from its N neighbour slots (fixed slot order) at one step or a sequence of steps."""

    action: Tensor  # (..., N) long action indices; -1 = none
    latent: Tensor  # (..., N, C) long class index of each categorical; -1 = none
    h: Tensor  # (..., N, deterministic) float32 deterministic state
    valid: Tensor  # (..., N) bool; False for empty slots (fewer neighbours than slots)


class LocalGraph(NamedTuple):
    """Agent i's neighbourhood: member 0 is agent i, members 1..N its neighbour slots."""

    member_ids: Tensor  # (M,) long global agent indices (any index for empty slots)
    adjacency: Tensor  # (M, M) bool: member a may attend to member b (graph edge); the diagonal is implied


class Observation(NamedTuple):
    """`RSSM.observe` of a (T, B) sequence: posterior states, both distributions' logits, and h after each action."""

    h: Tensor  # (T, B, deterministic)
    z: Tensor  # (T, B, C * K)
    posterior_logits: Tensor  # (T, B, C * K)
    prior_logits: Tensor  # (T, B, C * K)
    h_next: Tensor  # (T, B, deterministic): h_{t+1} from row t's state and actions, before any reset


class Imagination(NamedTuple):
    """A neighbourhood's imagined trajectory; rewards and continuation probabilities are member 0's."""

    features: Tensor  # (H + 1, n, M, C + H) compact [z, h] of every member, states 0..H (`compact_features`)
    actions: Tensor  # (H, n, M) long
    rewards: Tensor  # (H, n) predicted reward of member 0 after its action at step t
    continues: Tensor  # (H, n) predicted probability that member 0's episode goes on after step t
    valid: Tensor  # (n, M) bool
    member_rewards: Tensor | None  # (H, n, M) the reward head at every member's [z_t, h_{t+1}] (MAMBA averages these)
    available: Tensor | None  # (H, n, M, n_actions) bool: the actions each member could take, as the model predicted


def local_graph(agent: int, slots: Sequence[int | None], neighbours: Sequence[Sequence[int]],
                device: Any = None) -> LocalGraph:
    """The LocalGraph of `agent` whose neighbour slots hold the global agents `slots` (None = empty), on the
    graph given as neighbour lists `neighbours[k]` of every agent k, with its tensors on `device`."""
    members = [agent, *slots]
    ids = torch.tensor([-1 if m is None else m for m in members], dtype=torch.long, device=device)
    adjacency = torch.tensor([[a is not None and b is not None and (a == b or b in neighbours[a]) for b in members]
                              for a in members], dtype=torch.bool, device=device)
    return LocalGraph(ids.clamp(min=0), adjacency)


def mlp(in_dim: int, out_dim: int, layers: int, hidden: int, activation: type[nn.Module],
        classes: Sequence[int] = ()) -> nn.Sequential:
    """MAMBA's build_model: `layers` hidden layers of width `hidden`, each followed by `activation`, then a
    linear output; with `classes`, the first layer reads features [z, h] one-hot or compact
    (odmar_mpi.layers.CategoricalLinear), `in_dim` being the one-hot width."""
    first = CategoricalLinear(classes, in_dim - sum(classes), hidden) if classes else nn.Linear(in_dim, hidden)
    modules: list[nn.Module] = [first, activation()]
    for _ in range(layers - 1):
        modules += [nn.Linear(hidden, hidden), activation()]
    return nn.Sequential(*modules, nn.Linear(hidden, out_dim))


def one_hot(indices: Tensor, n: int) -> Tensor:
    """(..., ) long -> (..., n) float32 one-hot; index -1 gives the zero vector ("none")."""
    return F.one_hot(indices.clamp(min=0), n).to(torch.float32) * (indices >= 0).unsqueeze(-1)


def dropout(x: Tensor, p: float, training: bool, generator: torch.Generator) -> Tensor:
    """Inverted dropout drawing its mask from `generator` (nn.Dropout would draw from the global RNG)."""
    if not training or p == 0.0:
        return x
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep / (1.0 - p)


def position_encoding(ids: Tensor, width: int) -> Tensor:
    """MAMBA's sinusoid table row for each agent index: (..., M) long -> (..., M, width) float32."""
    j = torch.arange(width, device=ids.device)
    angles = ids.unsqueeze(-1).double() / 10000.0 ** (2 * torch.div(j, 2, rounding_mode="floor") / width).double()
    return torch.where(j % 2 == 0, torch.sin(angles), torch.cos(angles)).float()  # float64 table, as MAMBA's numpy


def attention_mask(valid: Tensor, adjacency: Tensor) -> Tensor:
    """(..., M) member validity and (M, M) adjacency -> (..., M, M) bool: row a attends column b where b is
    valid and adjacent to a; every row attends itself, so no row is empty."""
    eye = torch.eye(valid.shape[-1], dtype=torch.bool, device=valid.device)
    return (valid.unsqueeze(-2) & adjacency) | eye


def with_self(valid: Tensor) -> Tensor:
    """Neighbour-slot validity (..., N) -> member validity (..., 1 + N), member 0 (the agent) always valid."""
    own = torch.ones(*valid.shape[:-1], 1, dtype=valid.dtype, device=valid.device)  # also for N = 0 slots
    return torch.cat([own, valid], -1)


class AttentionLayer(nn.Module):
    """One post-norm transformer encoder layer with ReLU and feed-forward width = width (MAMBA's
    nn.TransformerEncoderLayer), attending only where the mask allows, dropout drawn from a generator."""

    def __init__(self, width: int, heads: int, p_dropout: float) -> None:
        super().__init__()
        self.heads, self.p_dropout = heads, p_dropout
        self.in_proj = nn.Linear(width, 3 * width)  # rows: query, key, value (torch's in_proj_weight layout)
        self.out_proj = nn.Linear(width, width)
        self.linear1 = nn.Linear(width, width)
        self.linear2 = nn.Linear(width, width)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x: Tensor, attend: Tensor, generator: torch.Generator, own_only: bool = False) -> Tensor:
        """x (..., M, width), attend (..., M, M) bool -> (..., M, width), or with `own_only` row 0 alone,
        (..., 1, width): only member 0's query is formed (what an agent's own transition reads)."""
        *batch, m, width = x.shape
        rows = 1 if own_only else m
        head = width // self.heads
        query = x[..., :rows, :]
        w, b = self.in_proj.weight, self.in_proj.bias
        q = F.linear(query, w[:width], b[:width]).view(*batch, rows, self.heads, head).transpose(-2, -3)
        k, v = F.linear(x, w[width:], b[width:]).view(*batch, m, 2, self.heads, head).transpose(-2, -4).unbind(-3)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(head)  # (..., heads, rows, M)
        weights = scores.masked_fill(~attend[..., :rows, :].unsqueeze(-3), float("-inf")).softmax(-1)
        weights = dropout(weights, self.p_dropout, self.training, generator)
        mixed = (weights @ v).transpose(-2, -3).reshape(*batch, rows, width)
        x = self.norm1(query + dropout(self.out_proj(mixed), self.p_dropout, self.training, generator))
        hidden = dropout(F.relu(self.linear1(x)), self.p_dropout, self.training, generator)
        return self.norm2(x + dropout(self.linear2(hidden), self.p_dropout, self.training, generator))


class CommunicationBlock(nn.Module):
    """Tokens ReLU(Linear([one_hot(a), z])) (+ sinusoid of the agent index) mixed by masked attention layers.

    A member's token input is one-hot [one_hot(a), z] (width n_actions + C K; the agent's own z carries
    straight-through gradients in training) or indexed [a, z's class indices] (width 1 + C, -1 = none: what
    neighbours send, and every member in imagination), read by one CategoricalLinear."""

    def __init__(self, config: WorldModelConfig, n_actions: int) -> None:
        super().__init__()
        self.n_actions = n_actions
        self.position_encoding = config.position_encoding
        classes = (n_actions, *[config.n_classes] * config.n_categoricals)
        self.token = nn.Sequential(CategoricalLinear(classes, 0, config.model_hidden, optional=True), nn.ReLU())
        self.layers = nn.ModuleList(AttentionLayer(config.model_hidden, config.comm_heads, config.comm_dropout)
                                    for _ in range(config.comm_layers))

    def positions(self, member_ids: Tensor) -> Tensor | float:
        """What each member's token adds, (M, model_hidden) (0 without position encoding)."""
        if not self.position_encoding:
            return 0.0
        return position_encoding(member_ids, self.token[0].out_features)

    def forward(self, inputs: Tensor, attend: Tensor, positions: Tensor | float, generator: torch.Generator) -> Tensor:
        """Every member's token input (..., M, width), one-hot or indexed, attend (..., M, M), positions from
        `positions` -> (..., M, model_hidden), row a = what member a feeds its GRU."""
        x = self.token(inputs) + positions
        for layer in self.layers:
            x = layer(x, attend, generator)
        return x

    def own_row(self, own_input: Tensor, neighbour_tokens: Tensor, attend: Tensor, positions: Tensor | float,
                generator: torch.Generator) -> Tensor:
        """Member 0's row alone, (..., model_hidden), from its token input (..., width) and the neighbours'
        tokens (..., N, model_hidden) as `neighbour_tokens` made them (what the agent's own transition reads)."""
        own = self.token(own_input).unsqueeze(-2) + (positions[:1] if torch.is_tensor(positions) else positions)
        x = torch.cat([own, neighbour_tokens], -2)
        for k, layer in enumerate(self.layers):
            x = layer(x, attend, generator, own_only=k == len(self.layers) - 1)
        return x[..., 0, :]

    def neighbour_tokens(self, actions: Tensor, latents: Tensor, positions: Tensor | float) -> Tensor:
        """Tokens of the neighbour slots, (..., N, model_hidden), from their actions (..., N) and latent class
        indices (..., N, C) (-1 = none): indexed, so any number of steps in one call."""
        inputs = torch.cat([actions.unsqueeze(-1), latents], -1).to(torch.float32)
        return self.token(inputs) + (positions[1:] if torch.is_tensor(positions) else positions)


class RSSM(nn.Module):
    """Recurrent state-space model of agent i: GRU on its communication row, categorical prior p(z | h) and
    posterior q(z | h, embed(o)) with straight-through one-hot samples."""

    def __init__(self, config: WorldModelConfig, n_actions: int) -> None:
        super().__init__()
        self.config, self.n_actions = config, n_actions
        self.comm = CommunicationBlock(config, n_actions)
        self.cell = nn.GRUCell(config.model_hidden, config.deterministic)
        self.prior = mlp(config.deterministic, config.stochastic, 1, config.model_hidden, nn.ReLU)
        self.posterior = mlp(config.deterministic + config.embed, config.stochastic, 1, config.hidden, nn.ReLU)

    def initial(self, batch_shape: Sequence[int], device: Any = None) -> RSSMState:
        """The zero state every episode (and every replayed window) starts from."""
        return RSSMState(torch.zeros(*batch_shape, self.config.deterministic, device=device),
                         torch.zeros(*batch_shape, self.config.stochastic, device=device))

    def sample_indices(self, logits: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """logits (..., C * K) -> (class index of each categorical (..., C) long, probabilities (..., C, K)).

        Each categorical is drawn by inverting its CDF at one uniform number (the first class whose cumulative
        probability reaches u): exact, and several times faster on CPU than torch.multinomial, which spent
        ~40% of an imagination with 32 x 32 latents drawing exponentials."""
        probs = logits.unflatten(-1, (self.config.n_categoricals, self.config.n_classes)).softmax(-1)
        cumulative = probs.detach().cumsum(-1)
        u = torch.rand(cumulative.shape[:-1] + (1,), generator=generator, device=logits.device, dtype=probs.dtype)
        return (cumulative < u * cumulative[..., -1:]).sum(-1).clamp(max=self.config.n_classes - 1), probs

    def sample(self, logits: Tensor, generator: torch.Generator) -> Tensor:
        """logits (..., C * K) -> one-hot sample (..., C * K) whose gradient is that of the probabilities."""
        indices, probs = self.sample_indices(logits, generator)
        return (F.one_hot(indices, self.config.n_classes).to(probs.dtype) + probs - probs.detach()).flatten(-2)

    def latent_indices(self, z: Tensor) -> Tensor:
        """One-hot z (..., C * K) -> class indices (..., C) long: what an agent sends its neighbours."""
        return z.unflatten(-1, (self.config.n_categoricals, self.config.n_classes)).argmax(-1)

    def latents(self, indices: Tensor) -> Tensor:
        """Class indices (..., C) long (-1 = none) -> one-hot z (..., C * K)."""
        return one_hot(indices, self.config.n_classes).flatten(-2)

    def features(self, state: RSSMState) -> Tensor:
        """The compact features [z's class indices, h] of a state (MAMBA's [z, h] order): what the actor reads."""
        return compact_features(state.h, self.latent_indices(state.z))

    def _deterministic(self, h: Tensor, z: Tensor, action: Tensor, neighbour_tokens: Tensor, attend: Tensor,
                       positions: Tensor | float, generator: torch.Generator) -> Tensor:
        """Agent i's next h (B, H) from its state (h, z) (B, .), its action (B,) (-1 = none) and its neighbours'
        tokens (B, N, model_hidden) (`CommunicationBlock.neighbour_tokens`); only member 0's row is formed."""
        own = torch.cat([one_hot(action, self.n_actions), z], -1)
        return self.cell(self.comm.own_row(own, neighbour_tokens, attend, positions, generator), h)

    def _posterior(self, h: Tensor, embed_part: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(posterior logits, straight-through sample) at h, given the embedding's share of the posterior's first
        layer, `embed_part` = W_embed embed (`_embed_part`)."""
        first, rest = self.posterior[0], self.posterior[1:]
        logits = rest(F.linear(h, first.weight[:, :self.config.deterministic], first.bias) + embed_part)
        return logits, self.sample(logits, generator)

    def _embed_part(self, embed: Tensor) -> Tensor:
        """The observation embedding's product with its columns of the posterior's first layer (any batch shape)."""
        return F.linear(embed, self.posterior[0].weight[:, self.config.deterministic:])

    def observe_step(self, previous: RSSMState, previous_action: Tensor, messages: NeighbourMessages, embed: Tensor,
                     is_first: Tensor, graph: LocalGraph,
                     generator: torch.Generator) -> tuple[RSSMState, Tensor, Tensor]:
        """One acting step of agent i: previous state (B, .), own previous action (B,), the neighbours'
        messages of the previous step (B, N, .), the new observation's embedding (B, embed) and is_first
        (B,) bool (resets state, action and messages to none) -> (posterior state, prior logits, posterior logits)."""
        keep = (~is_first).unsqueeze(-1).to(previous.h.dtype)
        attend = attention_mask(with_self(messages.valid), graph.adjacency)
        positions = self.comm.positions(graph.member_ids)
        tokens = self.comm.neighbour_tokens(messages.action.masked_fill(is_first.unsqueeze(-1), -1),
                                            messages.latent.masked_fill(is_first[..., None, None], -1), positions)
        h = self._deterministic(previous.h * keep, previous.z * keep, previous_action.masked_fill(is_first, -1),
                                tokens, attend, positions, generator)
        posterior_logits, z = self._posterior(h, self._embed_part(embed), generator)
        return RSSMState(h, z), self.prior(h), posterior_logits

    def observe(self, embed: Tensor, action: Tensor, is_first: Tensor, messages: NeighbourMessages, graph: LocalGraph,
                generator: torch.Generator) -> Observation:
        """Walk a replayed window with the posterior: embed (T, B, embed), action (T, B) long, is_first (T, B)
        bool, messages (T, B, N, .), all in the row convention of the module docstring. Row 0 starts from the
        zero state; is_first rows reset (h_next of the row before is still the continuation)."""
        steps, batch = action.shape
        attend = attention_mask(with_self(messages.valid), graph.adjacency)  # (T, B, M, M)
        positions = self.comm.positions(graph.member_ids)
        # What does not depend on the recurrence, for every step at once: the neighbours' tokens, the embeddings'
        # share of the posterior.
        tokens = self.comm.neighbour_tokens(messages.action, messages.latent, positions)  # (T, B, N, hidden)
        embed_part = self._embed_part(embed)
        start = self.initial((batch,), embed.device)
        no_messages = self.comm.neighbour_tokens(torch.full_like(messages.action[0], -1),
                                                 torch.full_like(messages.latent[0], -1), positions)
        # Row 0, and every row where an episode starts, begins from the zero state with no action and no messages:
        # the same inputs in every row, so one restart at row 0 serves them all (in training a restarting row
        # reuses row 0's dropout draw).
        restarted = self._deterministic(start.h, start.z, torch.full_like(action[0], -1), no_messages, attend[0],
                                        positions, generator)
        hs, zs, posteriors, h_next = [], [], [], []
        for t in range(steps):
            if t == 0:
                h = restarted
            else:
                h_next.append(self._deterministic(hs[-1], zs[-1], action[t - 1], tokens[t - 1], attend[t - 1],
                                                  positions, generator))
                h = torch.where(is_first[t].unsqueeze(-1), restarted, h_next[-1])  # episodes starting in the window
            posterior_logits, z = self._posterior(h, embed_part[t], generator)
            hs.append(h), zs.append(z), posteriors.append(posterior_logits)
        h_next.append(self._deterministic(hs[-1], zs[-1], action[-1], tokens[-1], attend[-1], positions, generator))
        hs = torch.stack(hs)
        return Observation(hs, torch.stack(zs), torch.stack(posteriors), self.prior(hs), torch.stack(h_next))

    def imagine_step(self, h: Tensor, latent: Tensor, actions: Tensor, attend: Tensor, positions: Tensor | float,
                     generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Step every member of a neighbourhood with the prior: h (n, M, H), latent class indices (n, M, C),
        actions (n, M) long, attend (n, M, M) -> (next h, next latent indices (sampled), prior logits)."""
        inputs = torch.cat([actions.unsqueeze(-1), latent], -1).to(h.dtype)
        x = self.comm(inputs, attend, positions, generator)
        h = self.cell(x.flatten(0, -2), h.flatten(0, -2)).view_as(h)
        logits = self.prior(h)
        return h, self.sample_indices(logits, generator)[0], logits

    def imagine(self, h: Tensor, latent: Tensor, policy: Callable[[Tensor], Tensor], horizon: int, attend: Tensor,
                member_ids: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Roll a neighbourhood forward `horizon` steps from h (n, M, H) and latent class indices (n, M, C), every
        member acting with `policy(compact features (n, M, C + H)) -> (n, M) long`: returns h (H + 1, n, M, H),
        latent indices (H + 1, n, M, C) (state 0 = the start) and actions (H, n, M)."""
        positions = self.comm.positions(member_ids)
        hs, latents, actions = [h], [latent], []
        for _ in range(horizon):
            actions.append(policy(compact_features(hs[-1], latents[-1])))
            h, latent, _ = self.imagine_step(hs[-1], latents[-1], actions[-1], attend, positions, generator)
            hs.append(h), latents.append(latent)
        return torch.stack(hs), torch.stack(latents), torch.stack(actions)


def compact_features(h: Tensor, latent: Tensor) -> Tensor:
    """[z, h] with z as its C class indices (as floats), (..., C + H): what the actor, the critic and the heads
    read without multiplying by z's zeros (odmar_mpi.layers.CategoricalLinear)."""
    return torch.cat([latent.to(h.dtype), h], -1)


def kl_balanced(posterior_logits: Tensor, prior_logits: Tensor, n_classes: int, balance: float) -> Tensor:
    """MAMBA's KL balancing: balance * KL(q || sg(p)) + (1 - balance) * KL(sg(q) || p) of the categoricals
    (logits (..., C * K)), summed over classes, averaged over categoricals and rows. Its value is KL(q || p)."""
    log_q = posterior_logits.unflatten(-1, (-1, n_classes)).log_softmax(-1)
    log_p = prior_logits.unflatten(-1, (-1, n_classes)).log_softmax(-1)

    def kl(a: Tensor, b: Tensor) -> Tensor:
        return (a.exp() * (a - b)).sum(-1).mean()

    return balance * kl(log_q, log_p.detach()) + (1.0 - balance) * kl(log_q.detach(), log_p)


class WorldModel(nn.Module):
    """Encoder, RSSM, decoder and the heads of reward, discount, available actions (optional) and the
    auxiliary prediction of the previous own action, initialised as MAMBA (xavier-uniform weights)."""

    def __init__(self, config: WorldModelConfig, obs_dim: int, n_actions: int, seed: int,
                 available_actions: bool = False) -> None:
        super().__init__()
        self.config, self.obs_dim, self.n_actions = config, obs_dim, n_actions
        with torch.random.fork_rng(devices=[]):  # a private seeded RNG; the caller's global RNG is untouched
            torch.manual_seed(seed)
            self.encoder = mlp(obs_dim, config.embed, 3, config.hidden, nn.ReLU)
            self.rssm = RSSM(config, n_actions)
            self.decoder = nn.Sequential(mlp(config.features, config.hidden, 2, config.hidden, nn.ReLU), nn.ReLU())
            self.decoder_out = nn.Linear(config.hidden, obs_dim)
            # the heads imagination reads take [z, h] one-hot (training) or compact (imagination)
            classes = [config.n_classes] * config.n_categoricals
            self.reward = mlp(config.features, 1, config.head_layers, config.head_hidden, nn.ELU, classes)
            self.discount = mlp(config.features, 1, config.head_layers, config.head_hidden, nn.ELU, classes)
            self.available = (mlp(config.features, n_actions, config.head_layers, config.head_hidden, nn.ELU, classes)
                              if available_actions else None)
            self.action_predictor = nn.Sequential(mlp(config.hidden, config.head_hidden, 1, config.head_hidden, nn.ELU),
                                                  nn.ReLU(), nn.Linear(config.head_hidden, n_actions))
            initialise(self, nn.init.xavier_uniform_)
        self.eval()  # dropout only inside `update`, as MAMBA

    def make_optimizer(self) -> torch.optim.Adam:
        """MAMBA's model optimiser: Adam with the configured learning rate."""
        return torch.optim.Adam(self.parameters(), lr=self.config.lr)

    def loss(self, batch: Any, graph: LocalGraph, generator: torch.Generator) -> dict[str, Tensor]:
        """Named loss terms and their sum "total" on a replayed batch, whose fields are (T, B, ...):
        obs, action (long), reward, terminal (bool), is_first (bool), nb_action (T, B, N), nb_latent
        (T, B, N, C), nb_h (T, B, N, H), nb_valid (T, B, N), and available (T, B, A) if the model has that head."""
        embed = self.encoder(batch.obs)
        messages = NeighbourMessages(batch.nb_action, batch.nb_latent, batch.nb_h, batch.nb_valid)
        seen = self.rssm.observe(embed, batch.action, batch.is_first, messages, graph, generator)
        state_features = torch.cat([seen.z, seen.h], -1)
        transition_features = torch.cat([seen.z, seen.h_next], -1)
        decoded = self.decoder(state_features)
        # previous own action, predicted from the decoder's hidden layer; rows without one are left out
        has_previous = ~batch.is_first[1:]
        action_loss = F.cross_entropy(self.action_predictor(decoded[1:]).flatten(0, 1), batch.action[:-1].flatten(),
                                      reduction="none")
        terms = {
            "reconstruction": F.smooth_l1_loss(self.decoder_out(decoded), batch.obs, reduction="none").sum(-1).mean(),
            "reward": F.smooth_l1_loss(self.reward(transition_features).squeeze(-1), batch.reward),
            "discount": F.binary_cross_entropy_with_logits(self.discount(transition_features).squeeze(-1),
                                                           (~batch.terminal).to(embed.dtype)),
            "kl": kl_balanced(seen.posterior_logits, seen.prior_logits, self.config.n_classes, self.config.kl_balance),
            "action_prediction": (action_loss * has_previous.flatten()).sum() / has_previous.sum().clamp(min=1),
        }
        if self.available is not None:
            terms["available_actions"] = F.binary_cross_entropy_with_logits(
                self.available(state_features), batch.available.to(embed.dtype), reduction="none").sum(-1).mean()
        terms["total"] = sum(terms.values())
        return terms

    def update(self, batch: Any, optimizer: torch.optim.Optimizer, graph: LocalGraph,
               generator: torch.Generator) -> dict[str, float]:
        """One Adam step on `loss(batch)` (dropout on, gradient norm clipped before the step); returns the
        loss terms and the gradient norm before clipping."""
        self.train()
        terms = self.loss(batch, graph, generator)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        grad_norm = nn.utils.clip_grad_norm_(self.parameters(), self.config.grad_clip)
        optimizer.step()
        self.eval()
        return {**{name: float(value.detach()) for name, value in terms.items()}, "grad_norm": float(grad_norm)}

    @torch.no_grad()
    def imagine(self, batch: Any, policy: Callable[[Tensor], Tensor], graph: LocalGraph,
                generator: torch.Generator, starts: Tensor | None = None, member_rewards: bool = False) -> Imagination:
        """Imagine agent i's neighbourhood `config.horizon` steps from the rows of a replayed batch (every row:
        n = T * B starts; or the rows where `starts` (T, B) bool is True, in row-major order): agent i starts
        from its posterior state, each neighbour from the (h, z) it sent at that step; every member acts with
        `policy(compact features (n, M, C + H), available (n, M, n_actions) bool or None) -> (n, M) long`, where a
        model with the available-actions head draws each member's available actions from it (MAMBA's imagination;
        at least one, all when it predicts none). The reward head reads every member only with `member_rewards`
        (else only member 0; `member_rewards` is None). Everything is compact: latents as class indices
        (`compact_features`)."""
        seen = self.rssm.observe(self.encoder(batch.obs), batch.action, batch.is_first,
                                 NeighbourMessages(batch.nb_action, batch.nb_latent, batch.nb_h, batch.nb_valid),
                                 graph, generator)
        h = torch.cat([seen.h.unsqueeze(-2), batch.nb_h], -2).flatten(0, 1)
        latent = torch.cat([self.rssm.latent_indices(seen.z).unsqueeze(-2), batch.nb_latent], -2).flatten(0, 1)
        valid = with_self(batch.nb_valid).flatten(0, 1)
        if starts is not None:
            rows = starts.flatten()
            h, latent, valid = h[rows], latent[rows], valid[rows]
        masks: list[Tensor] = []

        def act(features: Tensor) -> Tensor:
            if self.available is None:
                return policy(features, None)
            p = torch.sigmoid(self.available(features))
            mask = torch.rand(p.shape, generator=generator, device=p.device) < p
            masks.append(mask | ~mask.any(-1, keepdim=True))
            return policy(features, masks[-1])

        hs, latents, actions = self.rssm.imagine(h, latent, act, self.config.horizon,
                                                 attention_mask(valid, graph.adjacency), graph.member_ids, generator)
        own = compact_features(hs[1:, :, 0], latents[:-1, :, 0])  # member 0's [z_t, h_{t+1}]
        every = self.reward(compact_features(hs[1:], latents[:-1])).squeeze(-1) if member_rewards else None
        return Imagination(compact_features(hs, latents), actions,
                           every[..., 0] if member_rewards else self.reward(own).squeeze(-1),
                           torch.sigmoid(self.discount(own)).squeeze(-1), valid, every,
                           torch.stack(masks) if masks else None)
