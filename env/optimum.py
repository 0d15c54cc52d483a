"""The best return of the reward-collection world, computed exactly (docs/architecture.md, "The optimum").

Rewards are additive over agents and sites never deplete, so the team optimum is the sum over
agents of each agent's best *single plan*: move straight to one site, stop strictly inside its
radius, collect its value every remaining step, paying sum |a| on the way (or stand still).

For one agent (start p, per-axis gain g > 0, episode of T steps) a plan is a site j and an
arrival step k. Moving with actions a_1..a_k (|a_t| <= 1 per axis) reaches p + g * S with
S = sum_t a_t, |S_axis| <= k, and costs sum_t |a_t|_1 >= |S_x| + |S_y|, with equality when each
axis keeps one sign, e.g. the straight line a_t = S / k. So the cheapest way to be inside site j
after k moves is the weighted-L1 distance  min |d_x|/g_x + |d_y|/g_y  over displacements d with
p + d in the disc and |d_axis| <= k g_axis: a convex problem in the plane whose minimiser is one
of a few closed-form candidates (see `_cheapest_displacement`). The reward is counted after each
move, so arriving at step k collects v_j on steps k..T:
    return(j, k) = v_j (T - k + 1) - cost_j(k),      k = 1..T,
and k = 0 (v_j T, no cost) when the start is already strictly inside the disc. Positions are
clipped to the world, but a straight move between two points of the world never leaves it, so
clipping cannot change a plan's return (and pushing against a wall only costs).

Collection is strict (distance < radius), so the infimum over the closed disc is not attained;
plans aim at the disc shrunk by the relative margin PLAN_MARGIN, so that executing them in the
environment gives the planned return (to float round-off) and the figures are exact to ~1e-9.
A straight path that crosses another site collects that too when executed; the single-plan
figure (`Plan.value`, the definition of docs/architecture.md) does not count it, `Plan.executed` does. Of the
standard worlds (5 agents, seeds 0-4) only seed 3's agent 0 crosses one (+0.1 on its way from
(6, 0) along y = 0 through the 0.1-site at (2, 0)).

Pure numpy; knows nothing of MPI, models or policies.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from env.reward_world import COLLECTION_RADIUS, agent_gains, reward_sites, start_positions

PLAN_MARGIN = 1e-9  # aim inside the disc of radius radius * (1 - PLAN_MARGIN): collection is strict


@dataclass(frozen=True)
class Plan:
    """One agent's best single plan.

    site: index of the target site, or -1 for standing still (return 0 outside every site);
    arrival: the step k after whose move the agent is first inside (0: it starts inside);
    displacement: total move (2,) it makes, as p + displacement (the target position);
    actions: (arrival, 2) per-step actions, the straight line displacement / (gain * arrival),
    after which the agent stands still (action 0); value: the single-plan return (the target's
    value from arrival on, minus the cost); executed: the return the plan earns in the
    environment, i.e. value plus what the straight path collects from other sites on its way.
    """

    site: int
    arrival: int
    displacement: np.ndarray
    actions: np.ndarray
    value: float
    executed: float

    def action(self, t: int) -> np.ndarray:
        """The action at step t = 0, 1, ... of the episode (zero once arrived)."""
        return self.actions[t] if t < self.arrival else np.zeros(2)


def _weighted_l1(d: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.abs(d) @ weights


def _cheapest_displacement(offset: np.ndarray, radius: float, weights: np.ndarray,
                           reach: np.ndarray) -> np.ndarray | None:
    """The displacement d minimising sum_i weights_i |d_i| subject to |d - offset| <= radius and
    |d_i| <= reach_i, or None when the box and the disc do not meet.

    `offset` is the disc's centre relative to the start. The problem is convex, so its minimiser
    is (a) the minimiser over the disc alone if it lies in the box, or else (b) on the box's
    boundary inside the disc. (a) is where the smallest weighted-L1 diamond around the origin
    touches the disc: on a face (the tangent point c - radius * (w * s) / |w|, s the face's
    signs) or at a vertex (a point of the disc on an axis). (b): on each box edge the disc cuts a
    segment along which the objective is piecewise linear with its kink where the free
    coordinate is 0: the minimiser is an end of the segment or the kink. All candidates are
    feasible points, so the best of them is the exact minimum.
    """
    c, r = offset, radius
    candidates = []
    if c @ c <= r * r:
        candidates.append(np.zeros(2))
    norm_w = np.linalg.norm(weights)
    for sx in (-1.0, 1.0):
        for sy in (-1.0, 1.0):
            s = np.array([sx, sy])
            candidates.append(c - r * weights * s / norm_w)
    for axis in (0, 1):  # vertices: the disc's points with d[axis] = 0 nearest the origin
        other = 1 - axis
        if abs(c[axis]) <= r:
            half = np.sqrt(r * r - c[axis] ** 2)
            for end in (c[other] - half, c[other] + half, np.clip(0.0, c[other] - half, c[other] + half)):
                d = np.zeros(2)
                d[other] = end
                candidates.append(d)
    for axis in (0, 1):  # box edges d[axis] = +-reach[axis], cut by the disc
        other = 1 - axis
        for edge in (-reach[axis], reach[axis]):
            if abs(edge - c[axis]) > r:
                continue
            half = np.sqrt(r * r - (edge - c[axis]) ** 2)
            low = max(c[other] - half, -reach[other])
            high = min(c[other] + half, reach[other])
            if low > high:
                continue
            for free in (low, high, np.clip(0.0, low, high)):
                d = np.zeros(2)
                d[axis], d[other] = edge, free
                candidates.append(d)
    feasible = [d for d in candidates
                if (d - c) @ (d - c) <= r * r * (1 + 1e-12) and np.all(np.abs(d) <= reach * (1 + 1e-12))]
    if not feasible:
        return None
    costs = [_weighted_l1(d, weights) for d in feasible]
    best = feasible[int(np.argmin(costs))]
    return np.clip(best, -reach, reach)


def optimal_plan(start, gain, sites, values, episode_length: int, action_penalty: bool,
                 radius: float = COLLECTION_RADIUS) -> Plan:
    """The best single plan of one agent (see the module docstring); ties go to the earliest site
    and arrival. `start` (2,), `gain` (2,) > 0, `sites` (n, 2), `values` (n,) >= 0."""
    start = np.asarray(start, dtype=np.float64)
    gain = np.asarray(gain, dtype=np.float64)
    sites = np.asarray(sites, dtype=np.float64).reshape(-1, 2)
    values = np.asarray(values, dtype=np.float64)
    if not np.all(gain > 0):
        raise ValueError(f"gain = {gain}: the planner needs positive gains")
    if episode_length < 1:
        raise ValueError(f"episode_length = {episode_length}: must be >= 1")
    weights = 1.0 / gain  # cost per unit of displacement along each axis
    aim = radius * (1.0 - PLAN_MARGIN)
    stand_still = Plan(site=-1, arrival=0, displacement=np.zeros(2), actions=np.zeros((0, 2)), value=0.0, executed=0.0)
    best = stand_still
    for j, (site, value) in enumerate(zip(sites, values)):
        offset = site - start
        if offset @ offset < radius * radius:  # already inside: stand still and collect every step
            candidate_value = value * episode_length
            if candidate_value > best.value:
                best = Plan(j, 0, np.zeros(2), np.zeros((0, 2)), candidate_value, candidate_value)
            continue
        for k in range(1, episode_length + 1):
            collected = value * (episode_length - k + 1)
            if collected <= best.value:
                break  # later arrivals collect less, and cost is >= 0
            d = _cheapest_displacement(offset, aim, weights, k * gain)
            if d is None:
                continue
            cost = float(_weighted_l1(d, weights)) if action_penalty else 0.0
            if collected - cost > best.value:
                actions = np.repeat((d / (gain * k))[None], k, axis=0)
                best = Plan(j, k, d, actions, collected - cost, collected - cost)
    if best.arrival > 1:
        best = replace(best, executed=best.value + _collected_on_the_way(best, start, gain, sites, values, radius))
    return best


def _collected_on_the_way(plan: Plan, start: np.ndarray, gain: np.ndarray, sites: np.ndarray, values: np.ndarray,
                          radius: float) -> float:
    """What the plan's straight path collects from sites other than its target at steps 1..k-1
    (the same arithmetic as the environment: position += action * gain, then the strict test)."""
    position, total = start.copy(), 0.0
    for action in plan.actions[:-1]:
        position = position + action * gain
        offsets = sites - position
        inside = np.einsum("ij,ij->i", offsets, offsets) < radius * radius
        inside[plan.site] = False
        total += float(values[inside].sum())
    return total


def optimal_agent_return(start, gain, sites, values, episode_length: int, action_penalty: bool,
                         radius: float = COLLECTION_RADIUS) -> float:
    """The best single-plan return of one agent (see `optimal_plan` for the plan itself)."""
    return optimal_plan(start, gain, sites, values, episode_length, action_penalty, radius).value


def optimal_team_return(n_agents: int, seed: int, n_rewards: int = 10, action_penalty: bool = True,
                        episode_length: int = 100) -> tuple[float, list[float]]:
    """(team optimum, per-agent optima) of the standard world for (n_agents, seed, n_rewards):
    the same starts, gains and sites as every `AgentEnv` built with those arguments."""
    sites, values = reward_sites(n_rewards)
    starts = start_positions(n_agents)
    gains = agent_gains(n_agents, seed)
    per_agent = [optimal_agent_return(starts[i], gains[i], sites, values, episode_length, action_penalty)
                 for i in range(n_agents)]
    return float(sum(per_agent)), per_agent


if __name__ == "__main__":  # a quick table: python -m env.optimum
    for n, seed, penalty in [(5, 0, True), (5, 1, True), (5, 2, True), (5, 3, True), (5, 4, True),
                             (4, 0, True), (5, 0, False)]:
        team, per_agent = optimal_team_return(n, seed, action_penalty=penalty)
        print(f"agents {n} seed {seed} penalty {penalty}: team {team:.3f}  per agent "
              + " ".join(f"{v:.3f}" for v in per_agent))
