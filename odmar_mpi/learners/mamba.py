"""MAMBA, one rank per agent (docs/architecture.md, "MAMBA").

Each rank holds its own world model (an RSSM whose transition attends over the agent's own token and
its graph neighbours' tokens), its own actor-critic and its own replay of sequences. Every step, after
choosing its action, the rank sends each neighbour one message: its action, the class indices of its
stochastic latent z and its deterministic state h. The tokens of the next step's transition are built
from these messages, so with one communication layer the rank's h_t is exactly what an all-agent
model restricted to the graph computes (on a complete graph: MAMBA's own attention).

Every `mamba.train_every` steps: `model_updates` world-model steps on replayed sequences, then
`policy_updates` rounds of imagining the rank's neighbourhood forward from replayed posterior states
and training the actor-critic with PPO on the imagined trajectory (own predicted reward), then the
shared weights (world model, actor, critic) are averaged with the neighbours (`comm.parameter_rounds`
rounds of x <- W x: decentralised SGD instead of MAMBA's single shared copy).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from env.coupled import random_action
from odmar_mpi.comm.consensus import VectorGossip
from odmar_mpi.learners.base import (TRAINING_MODES, Learner, LearnerContext, Transition, average_with_neighbours,
                                     figures, require_finite)
from odmar_mpi.model.rssm import NeighbourMessages, RSSMState, WorldModel, local_graph
from odmar_mpi.policy.ppo import PPO
from odmar_mpi.policy.sequences import SequenceBuffer
from odmar_mpi.streams import shared_seed


ABSENT = -2.0
"""The action slot of the message of an agent that has left the episode while its neighbours go on."""


@dataclass
class ActingCopy:
    """The recurrent state of one copy of the world the agent acts in (training, or evaluation)."""

    state: RSSMState  # posterior state after the last observation, (1, .)
    action: int  # the last action taken (-1: none yet)
    messages: NeighbourMessages  # what the neighbours sent at the last step, (1, N, .)
    first: bool  # the next observation starts an episode
    absent: bool = False  # the agent has left this episode (dead, arrived) while the others go on


class MAMBALearner(Learner):
    """World model + actor-critic in imagination, neighbour messages every step, averaged weights."""

    tables = {
        # one row per training phase: world-model loss terms, PPO statistics, imagined vs real reward per step,
        # the disagreement with the neighbours before the averaging (largest relative difference |x_j - x_i|_inf /
        # max(|x_i|_inf, |x_j|_inf) to a neighbour's weights, from the averaging round itself), bytes sent per
        # neighbour
        "mamba": ("step", "reconstruction", "reward_loss", "discount_loss", "kl", "action_prediction", "model_loss",
                  "policy_loss", "value_loss", "entropy", "imagined_reward", "real_reward", "disagreement",
                  "parameter_bytes", "message_bytes_per_step", "approx_kl", "clip_fraction", "returns_mean",
                  "imagined_starts"),
    }

    def __init__(self, ctx: LearnerContext) -> None:
        self.ctx = ctx
        cfg, world = ctx.cfg, ctx.world
        self.device = device = ctx.device
        self.settings, self.model_config = cfg.mamba, cfg.world_model
        self.model_every = cfg.mamba.train_every
        neighbours = ctx.graph.neighbours[ctx.rank] if cfg.mamba.communication == "neighbours" else ()
        self.slots = len(neighbours)
        self.graph = local_graph(ctx.rank, list(neighbours), ctx.graph.neighbours, device)
        # Every rank starts from the same weights (they are averaged later, as if shared). Where the world
        # restricts actions, the model also predicts which are available (as MAMBA's does), for imagination.
        self.masked = bool(getattr(world, "masked", False))
        self.model = WorldModel(self.model_config, world.obs_dim, world.n_actions, shared_seed(cfg.run.seed, "model"),
                                available_actions=self.masked).to(device)
        self.model_optimizer = self.model.make_optimizer()
        self.ppo = PPO(self.model_config.compact_features, world.n_actions, cfg.ppo, shared_seed(cfg.run.seed, "init"),
                       device, classes=[self.model_config.n_classes] * self.model_config.n_categoricals)
        self.buffer = SequenceBuffer(cfg.mamba.buffer_size, world.obs_dim, self.slots, self.model_config.n_categoricals,
                                     self.model_config.deterministic, seed=ctx.seed("replay"),
                                     n_available=world.n_actions if self.masked else None, device=device)
        self.generator = torch.Generator(device).manual_seed(ctx.seed("policy"))
        # the evaluation copy's posterior samples and sampled actions: evaluations never shift training's stream
        self.eval_generator = torch.Generator(device).manual_seed(ctx.seed("evaluate"))
        self.warmup_rng = np.random.default_rng(ctx.seed("warmup"))
        self.random_rng = np.random.default_rng(ctx.seed("random_eval"))  # used once, before training
        self.message_width = 1 + self.model_config.n_categoricals + self.model_config.deterministic
        self.message_size = self.message_width if self.slots else 0
        self.copies = {"train": self.fresh_copy(), "eval": self.fresh_copy()}
        # Per training step the agent acted in, until its transition arrives: (is_first, the neighbours' messages
        # of that step as received, (N, 1 + C + H) on the host).
        self.pending: deque[tuple[bool, np.ndarray]] = deque()

    # ------------------------------------------------------------------ acting

    def fresh_copy(self) -> ActingCopy:
        return ActingCopy(self.model.rssm.initial((1,), self.device), -1, self.no_messages(), True)

    def no_messages(self) -> NeighbourMessages:
        """Before a neighbour has sent anything: every slot holds a neighbour, with no action and no latent yet."""
        c, h, device = self.model_config.n_categoricals, self.model_config.deterministic, self.device
        return NeighbourMessages(torch.full((1, self.slots), -1, device=device),
                                 torch.full((1, self.slots, c), -1, device=device),
                                 torch.zeros(1, self.slots, h, device=device),
                                 torch.ones(1, self.slots, dtype=torch.bool, device=device))

    def empty_messages(self) -> np.ndarray:
        """The host form of `no_messages`: rows [action, latent indices, h] of no neighbour message yet."""
        rows = np.zeros((self.slots, self.message_width))
        rows[:, :1 + self.model_config.n_categoricals] = -1
        return rows

    @staticmethod
    def copy_of(mode: str) -> str:
        return "train" if mode in TRAINING_MODES else "eval"

    def begin_episode(self, mode: str) -> None:
        copy = self.copies[self.copy_of(mode)]
        copy.first, copy.absent = True, False

    def leave(self, mode: str) -> None:
        self.copies[self.copy_of(mode)].absent = True

    @torch.no_grad()
    def act(self, obs: np.ndarray, mode: str, available: np.ndarray | None = None) -> np.ndarray:
        """Filter the observation into the posterior state (with last step's own action and messages), then
        act among the `available` actions: uniformly at random (warmup, random), by sampling the actor
        (explore), or in evaluations as `ppo.evaluation` says (sampled, as MAMBA's controller always acts, or
        the argmax)."""
        copy = self.copies[self.copy_of(mode)]
        generator = self.generator if copy is self.copies["train"] else self.eval_generator
        device = self.device
        embed = self.model.encoder(torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0))
        state, _, _ = self.model.rssm.observe_step(copy.state, torch.tensor([copy.action], device=device),
                                                   copy.messages, embed, torch.tensor([copy.first], device=device),
                                                   self.graph, generator)
        if mode in ("warmup", "random"):
            rng = self.warmup_rng if mode == "warmup" else self.random_rng
            action = random_action(rng, self.ctx.world.n_actions, available)
        else:
            greedy = mode != "explore" and self.ctx.cfg.ppo.evaluation == "argmax"
            mask = None if available is None else torch.as_tensor(available, device=device).bool().unsqueeze(0)
            action = self.ppo.actor.act(self.model.rssm.features(state), generator, greedy, mask)[0]
        if copy is self.copies["train"]:
            self.pending.append((copy.first, self.empty_messages()))
        copy.state, copy.action, copy.first = state, action, False
        return np.asarray(action)

    def message(self, mode: str) -> np.ndarray:
        """[action, C latent class indices, h] of this step (float64; the integers are exact), one copy to the host;
        an agent out of the episode sends [ABSENT, -1, ..., 0, ...]."""
        copy = self.copies[self.copy_of(mode)]
        if copy.absent:
            absent = self.empty_messages()[:1].reshape(-1)
            absent[0] = ABSENT
            return absent
        latent = self.model.rssm.latent_indices(copy.state.z)[0]
        action = torch.tensor([copy.action], dtype=torch.float32, device=self.device)
        return torch.cat([action, latent.float(), copy.state.h[0]]).to("cpu", torch.float64).numpy()

    def receive(self, mode: str, messages: list[np.ndarray]) -> None:
        """The neighbours' messages of this step; a neighbour out of the episode is left out of the attention."""
        c = self.model_config.n_categoricals
        rows = np.stack(messages)
        received = torch.as_tensor(rows, dtype=torch.float32).to(self.device).unsqueeze(0)  # one copy to the device
        copy = self.copies[self.copy_of(mode)]
        copy.messages = NeighbourMessages(received[..., 0].long().clamp(min=-1), received[..., 1:1 + c].long(),
                                          received[..., 1 + c:], received[..., 0] != ABSENT)
        if copy is self.copies["train"] and not copy.absent:  # this step's entry, appended by act
            self.pending[-1] = (self.pending[-1][0], rows)

    # ------------------------------------------------------------------ learning

    def observe(self, transition: Transition) -> None:
        is_first, messages = self.pending.popleft()
        c = self.model_config.n_categoricals
        self.buffer.add(transition.obs, int(transition.action), transition.reward, transition.terminated, is_first,
                        np.maximum(messages[:, 0], -1), messages[:, 1:1 + c], messages[:, 1 + c:],
                        messages[:, 0] != ABSENT, transition.available)

    def update(self, step: int) -> None:
        """MAMBA trains in phases (`model_step`), not every step."""

    def model_step(self, step: int, gossip: VectorGossip) -> None:
        """Train the world model, then the actor-critic in imagination, averaging the weights with the neighbours
        as `mamba.average_every` says. Any non-finite loss, gradient or parameter stops the run before an
        averaging."""
        stats, disagreement, parameter_bytes = self.train_phase(step, gossip)
        if stats is not None:
            self.ctx.records.append("mamba", step=step, **stats, disagreement=disagreement,
                                    parameter_bytes=parameter_bytes,
                                    message_bytes_per_step=8 * self.message_size * self.slots)

    def train_phase(self, step: int, gossip: VectorGossip | None = None,
                    ) -> tuple[dict[str, float] | None, float, float]:
        """`model_updates` world-model steps, then `policy_updates` rounds of imagination + PPO; with a gossip
        handle, the averaging: every `average_every` world-model steps (and after the last) the world model,
        after every round the actor and critic; or, with average_every = 0, everything once at the end. Returns
        the last steps' statistics (the columns of the `mamba` table that do not concern the averaging; None
        when the replay does not yet hold a window: an agent that left its episodes early has less data), the
        disagreement before the last averaging and the bytes sent to each neighbour in the phase. The averaging
        rounds are the same on every rank, trained or not: they are collective."""
        every, updates = self.settings.average_every, self.settings.model_updates
        trains = len(self.buffer) >= self.settings.sequence_length
        averaged: list[tuple[float, float]] = []

        def average(parameters: list[torch.nn.Parameter], what: str) -> None:
            if gossip is not None:
                averaged.append(self.average_weights(gossip, step, parameters, what))

        model = list(self.model.parameters())
        policy = [*self.ppo.actor.parameters(), *self.ppo.critic.parameters()]
        for k in range(updates):
            if trains:
                model_stats = self.train_model(step)
            if every and ((k + 1) % every == 0 or k + 1 == updates):
                average(model, "MAMBA's world-model parameters")
        for _ in range(self.settings.policy_updates):
            if trains:
                policy_stats = self.train_policy(step)
            if every:
                average(policy, "MAMBA's actor and critic parameters")
        if not every:
            average(model + policy, "MAMBA's world-model, actor and critic parameters")
        disagreement, sent = (averaged[-1][0] if averaged else 0.0), sum(sent for _, sent in averaged)
        if not trains:
            return None, disagreement, sent
        stats = {"reconstruction": model_stats["reconstruction"], "reward_loss": model_stats["reward"],
                 "discount_loss": model_stats["discount"], "kl": model_stats["kl"],
                 "action_prediction": model_stats["action_prediction"], "model_loss": model_stats["total"],
                 **policy_stats}
        return stats, disagreement, sent

    def train_model(self, step: int) -> dict[str, float]:
        """One world-model step on replayed windows; its loss terms and gradient norm (all finite, or the run stops)."""
        cfg = self.settings
        with self.ctx.clock("model"):
            batch = self.buffer.sample(cfg.batch_size, cfg.sequence_length)
            stats = self.model.update(batch, self.model_optimizer, self.graph, self.generator)
        require_finite("MAMBA's world-model losses and gradient norm", list(stats.values()), self.ctx.rank, step,
                       fix="lower world_model.lr or world_model.grad_clip")
        return stats

    def train_policy(self, step: int) -> dict[str, float]:
        """One round of imagination from replayed posterior states and PPO on it; its statistics."""
        cfg, clock = self.settings, self.ctx.clock
        neighbourhood = cfg.imagined_reward == "neighbourhood"  # MAMBA: the mean of the agents' predicted rewards
        with clock("imagination"):
            batch = self.buffer.sample(cfg.imagine_batch_size or cfg.batch_size, cfg.sequence_length)
            # burn_in = 0 keeps every row: no mask, no copy of the start states
            starts = imagination_starts(batch.is_first, cfg.burn_in) if cfg.burn_in else None
            imagined = self.model.imagine(batch, lambda f, a: self.ppo.actor.sample(f, self.generator, a), self.graph,
                                          self.generator, starts=starts, member_rewards=neighbourhood)
            rewards = imagined.rewards
            if neighbourhood:
                valid = imagined.valid.to(rewards.dtype)
                rewards = (imagined.member_rewards * valid).sum(-1) / valid.sum(-1)
            # each step counts as much as the predicted probability that the episode is still going there
            going = torch.cat([torch.ones_like(imagined.continues[:1]), imagined.continues[:-1].cumprod(0)])
        with clock("updates"):
            ppo_batch = self.ppo.make_batch(imagined.features, imagined.valid, imagined.actions[..., 0], rewards,
                                            imagined.continues, available=None if imagined.available is None else
                                            imagined.available[:, :, 0], weights=going)
            stats = self.ppo.update(ppo_batch, self.generator)
        require_finite("MAMBA's actor and critic losses", list(stats.values()), self.ctx.rank, step,
                       fix="lower ppo.actor_lr and ppo.critic_lr")
        return {**{key: stats[key] for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction",
                                               "returns_mean")},
                "imagined_reward": float(rewards.mean()), "real_reward": float(batch.reward.mean()),
                "imagined_starts": float(imagined.valid.shape[0])}

    def progress_note(self) -> str:
        """The world model's reconstruction and reward losses and the policy's entropy, of the last training phase."""
        last = self.ctx.records.last
        return figures(("recon", last("mamba", "reconstruction")), ("reward loss", last("mamba", "reward_loss")),
                       ("entropy", last("mamba", "entropy")))

    def shared_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.model.parameters(), *self.ppo.actor.parameters(), *self.ppo.critic.parameters()]

    def average_weights(self, gossip: VectorGossip, step: int, parameters: list[torch.nn.Parameter] | None = None,
                        what: str = "MAMBA's world-model, actor and critic parameters") -> tuple[float, float]:
        """D-PSGD's averaging of `parameters` (default: the world model, actor and critic) with the neighbours
        (`comm.parameter_rounds` rounds); the optimisers' moments stay this rank's own (docs/architecture.md,
        "MAMBA"). Returns the disagreement before it and the bytes sent to each neighbour. Collective."""
        with self.ctx.clock("averaging"):
            return average_with_neighbours(parameters or self.shared_parameters(), gossip,
                                           self.ctx.cfg.comm.parameter_rounds, self.ctx.rank, step, what)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "model_optimizer": self.model_optimizer.state_dict(),
            "ppo": self.ppo.state_dict(), "buffer": self.buffer.state_dict(),
            "generator": self.generator.get_state(), "eval_generator": self.eval_generator.get_state(),
            "warmup_rng": self.warmup_rng.bit_generator.state,
            "copies": {name: _copy_state(copy) for name, copy in self.copies.items()},
            "pending": [[float(first), messages] for first, messages in self.pending],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.model_optimizer.load_state_dict(state["model_optimizer"])
        self.ppo.load_state_dict(state["ppo"])
        self.buffer.load_state_dict(state["buffer"])
        self.generator.set_state(state["generator"])
        self.eval_generator.set_state(state["eval_generator"])
        self.warmup_rng.bit_generator.state = state["warmup_rng"]
        device = self.device
        self.copies = {name: ActingCopy(RSSMState(saved["h"].to(device), saved["z"].to(device)), int(saved["action"]),
                                        NeighbourMessages(*(tensor.to(device) for tensor in saved["messages"])),
                                        bool(saved["first"]), bool(saved["absent"]))
                       for name, saved in state["copies"].items()}
        self.pending = deque((bool(first), np.asarray(messages).reshape(self.slots, self.message_width))
                             for first, messages in state["pending"])


def imagination_starts(is_first: torch.Tensor, burn_in: int) -> torch.Tensor:
    """Rows of replayed windows (T, B) whose posterior state has a true history: row t of a window is
    filtered from the zero state at row 0, which is the acting agent's state only where an episode starts
    at or before t inside the window (row 0 included); other rows qualify once the window has filtered
    `burn_in` steps (t >= burn_in). burn_in = 0 keeps every row (MAMBA)."""
    rows = torch.arange(is_first.shape[0], device=is_first.device).unsqueeze(1)
    return (rows >= burn_in) | is_first.cummax(0).values


def _copy_state(copy: ActingCopy) -> dict[str, Any]:
    return {"h": copy.state.h.clone(), "z": copy.state.z.clone(), "action": copy.action,
            "messages": [tensor.clone() for tensor in copy.messages], "first": copy.first, "absent": copy.absent}
