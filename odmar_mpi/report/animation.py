"""`report --gif`: the trained team in one evaluation episode, as an animated GIF, for every algorithm.

In one process, without MPI: every rank's learner is built from the run's config as the node builds it (a
`LearnerContext` per rank with that rank's copy of the world from `odmar_mpi.worlds.make_world`), each loads
its state from the newest checkpoint step that every rank has (falling back to an older common step when a
file is damaged), and the team plays one episode as an evaluation does (`odmar_mpi.node`'s `step_world` and
`run_episodes`): each learner acts in mode "evaluate"; learners that talk to their neighbours (MAMBA) pass
this step's message to each graph neighbour, which receives them in its neighbour order; a coupled world steps
every copy with the joint action table (n_agents, action_width). The worlds are fresh copies, so the episode
is the world's first (a coupled world's episode 0, the one its random-policy evaluation began with). Frames: the reward-collection world drawn by
`env.render_rgb` from every copy's agent (each copy moves only its own), a coupled world by its PettingZoo
environment's own `render` in "rgb_array" mode (mpe2's simple_spread, Flatland, SMAX).
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from odmar_mpi.checkpoint import CheckpointError, load_checkpoint, local_steps, newest_common_step
from odmar_mpi.report.runs import ReportError, Run
from odmar_mpi.streams import stream_seed
from odmar_mpi.worlds import make_world

GIF_EVERY = 2  # render every 2nd step: half the frames, motion still smooth
GIF_SIZE = 300  # pixels on the longer side
GIF_FPS = 10
MODE = "evaluate"


class Animation(NamedTuple):
    step: int
    """Checkpoint step the learners come from."""
    frames: int
    team_return: float
    """Team return of the animated episode (sum of the agents' own rewards)."""


def load_learners(run: Run) -> tuple[int, list[Any], list[Any], Any]:
    """(checkpoint step, every rank's learner loaded from it, every rank's world copy, the communication graph),
    built from the newest checkpoint step every rank has and can load, on the CPU (on a GPU for a run that ran on
    GPUs, where one is visible)."""
    import torch

    from odmar_mpi.learners import learner_class
    from odmar_mpi.learners.base import LearnerContext
    from odmar_mpi.records import Records

    cfg, n = run.config, len(run.ranks)
    step, states = _newest_states(run.path, n)
    graph = cfg.comm.graph(n, cfg.run.seed)
    learner = learner_class(cfg.run.algorithm)
    # A learner's state holds its random generators' states, which belong to the device type it ran on.
    on_gpu = run.device.startswith("cuda")
    device = torch.device("cuda" if on_gpu and torch.cuda.is_available() else "cpu")
    learners, worlds = [], []
    for rank in range(n):
        world = make_world(cfg, rank, n)
        ctx = LearnerContext(cfg=cfg, world=world, rank=rank, n_agents=n, graph=graph, device=device,
                             seed=partial(stream_seed, cfg.run.seed, rank), records=Records(learner.tables),
                             clock=lambda phase: nullcontext())
        agent = learner(ctx)
        try:
            agent.load_state_dict(states[rank]["learner"])
        except (KeyError, ValueError, RuntimeError) as err:  # a state of another shape, version or device type
            fix = ("it ran on a GPU and its state holds CUDA generator states: animate it where a GPU is visible"
                   if on_gpu and device.type == "cpu" else "animate it with the version that wrote it")
            raise ReportError(f"rank {rank}'s checkpoint of step {step} in {run.path} does not fit the learner its "
                              f"config builds on {device} ({type(err).__name__}: {err}); {fix}.") from None
        learners.append(agent)
        worlds.append(world)
    return step, learners, worlds, graph


def _newest_states(run_dir: Path, n: int) -> tuple[int, list[dict[str, Any]]]:
    """The newest checkpoint step every rank has and whose files all load, with every rank's state."""
    steps = [local_steps(run_dir, rank) for rank in range(n)]
    reasons = []
    step = newest_common_step(steps)
    while step is not None:
        try:
            return step, [load_checkpoint(run_dir, rank, step, ranks=n) for rank in range(n)]
        except CheckpointError as err:
            reasons.append(str(err))
            step = newest_common_step([[s for s in rank_steps if s < step] for rank_steps in steps])
    why = f" ({'; '.join(reasons)})" if reasons else ""
    raise ReportError(f"{Path(run_dir) / 'checkpoints'} has no step that all {n} ranks have checkpointed and can "
                      f"load{why}; --gif needs every agent's learner from one step.")


def exchange_messages(learners: list[Any], graph: Any, mode: str = MODE) -> None:
    """After every learner acted: each learner that sends messages receives its graph neighbours' of this step, in
    the order of its neighbour list, as `odmar_mpi.node.Node.step_world` delivers them over MPI."""
    if not any(learner.message_size for learner in learners):
        return
    messages = [learner.message(mode) if learner.message_size else None for learner in learners]
    for rank, learner in enumerate(learners):
        if learner.message_size:
            learner.receive(mode, [messages[j] for j in graph.neighbours[rank]])


def play_episode(cfg: Any, learners: list[Any], worlds: list[Any], graph: Any, every: int = GIF_EVERY,
                 size: int = GIF_SIZE) -> tuple[list[Any], float]:
    """One evaluation episode of the whole team (rank r acts with `learners[r]` in `worlds[r]`).

    Returns (PIL images at t = 0, every, 2*every, ... and the last step, team return of the episode).
    """
    frames = Frames(cfg, worlds, size)
    observations = [world.reset() for world in worlds]
    for learner in learners:
        learner.begin_episode(MODE)
    total, t, done = 0.0, 0, False
    images = [frames.image(t, total)]
    while not done:
        actions = [learner.act(obs, MODE) for learner, obs in zip(learners, observations)]
        exchange_messages(learners, graph)
        joint = (np.stack([np.asarray(a, dtype=np.float64).reshape(-1) for a in actions]) if worlds[0].coupled
                 else None)
        steps = [world.step(action, joint) for world, action in zip(worlds, actions)]
        observations = [obs for obs, *_ in steps]
        total += sum(reward for _, reward, _, _ in steps)
        done = any(terminated or truncated for _, _, terminated, truncated in steps)
        t += 1
        frames.moved()
        if t % every == 0 or done:
            images.append(frames.image(t, total))
    return images, total


class Frames:
    """Pictures of the team's world: every copy's agent in the reward-collection world (with trails), or a
    coupled world's own rendering (all copies are identical: copy 0's)."""

    def __init__(self, cfg: Any, worlds: list[Any], size: int) -> None:
        self.cfg, self.worlds, self.size = cfg, worlds, size
        self.trails: list[np.ndarray] = []
        if worlds[0].coupled:
            env = worlds[0].env
            base = getattr(env, "unwrapped", env)
            if getattr(base, "render_mode", None) is None:
                base.render_mode = "rgb_array"  # the worlds' factories build them without rendering

    def moved(self) -> None:
        if not self.worlds[0].coupled:
            self.trails.append(self._positions())

    def _positions(self) -> np.ndarray:
        return np.stack([world.position for world in self.worlds])

    def image(self, t: int, team_return: float) -> Any:
        """The world now, captioned with the step and the team return collected so far."""
        from PIL import Image, ImageDraw

        if self.worlds[0].coupled:
            pixels = self.worlds[0].env.render()
            if pixels is None:
                raise ReportError(f"world {self.cfg.env.world!r} cannot draw itself: its render() gave no image in "
                                  "'rgb_array' mode, so --gif has nothing to animate.")
            image = Image.fromarray(np.asarray(pixels, dtype=np.uint8)[..., :3])
            scale = self.size / max(image.size)
            image = image.resize((max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale))))
        else:
            from env import render_rgb, reward_sites

            if not self.trails:
                self.trails.append(self._positions())
            sites, values = reward_sites(self.cfg.env.n_rewards)
            image = Image.fromarray(render_rgb(self._positions(), sites, values, size=self.size,
                                               trails=np.stack(self.trails)))
        # The caption also makes every frame distinct: Pillow merges identical consecutive GIF frames.
        ImageDraw.Draw(image).text((4, 4), f"t = {t}   team return {team_return:.2f}", fill=(0, 0, 0))
        return image


def write_gif(run: Run, path: Path, every: int = GIF_EVERY, size: int = GIF_SIZE) -> Animation:
    """Animate the trained team: the newest common checkpoint's learners, one evaluation episode."""
    step, learners, worlds, graph = load_learners(run)
    frames, team_return = play_episode(run.config, learners, worlds, graph, every, size)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=1000 // GIF_FPS, loop=0)
    return Animation(step=step, frames=len(frames), team_return=team_return)
