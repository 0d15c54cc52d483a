"""Pictures of the reward-collection world: an RGB array with numpy alone, or a matplotlib figure.

Both draw the same thing: every reward site as a disc of the collection radius, darker green
for a larger value, and agent i as a dot of colour `AGENT_COLOURS[i % len(AGENT_COLOURS)]`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from env.reward_world import COLLECTION_RADIUS, OBS_DIM, WORLD_HIGH, WORLD_LOW

# Matplotlib's tab10 without its green, which would vanish against the sites.
AGENT_COLOURS = np.array([(31, 119, 180), (255, 127, 14), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                          (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)], dtype=np.uint8)
BACKGROUND = np.array((255, 255, 255), dtype=np.uint8)
SITE_LIGHT = np.array((199, 233, 192), dtype=np.float64)  # colour of a site worth nothing
SITE_DARK = np.array((0, 109, 44), dtype=np.float64)  # colour of the most valuable site
AGENT_RADIUS = 0.2  # world units
TRAIL_RADIUS = 0.07  # world units


def agent_colours(n_agents: int) -> np.ndarray:
    """(n_agents, 3) uint8 colours, cycling through AGENT_COLOURS."""
    return AGENT_COLOURS[np.arange(n_agents) % len(AGENT_COLOURS)]


def site_colours(values: np.ndarray) -> np.ndarray:
    """(n_sites, 3) uint8 colours, from light (value 0) to dark green (the largest value)."""
    values = np.asarray(values, dtype=np.float64)
    shade = values / values.max() if values.max() > 0 else np.zeros_like(values)
    return np.rint(SITE_LIGHT + shade[:, None] * (SITE_DARK - SITE_LIGHT)).astype(np.uint8)


def _check_points(name: str, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.shape[-1:] != (OBS_DIM,):
        raise ValueError(f"{name} must have last dimension {OBS_DIM} (x, y), got shape {points.shape}")
    return points


def _paint_disc(image: np.ndarray, centre: np.ndarray, radius: float, colour: np.ndarray) -> None:
    """Colour the pixels of `image` whose centres lie within `radius` pixels of `centre` (row, col)."""
    size = image.shape[0]
    low = np.clip(np.floor(centre - radius).astype(int), 0, size)
    high = np.clip(np.ceil(centre + radius).astype(int) + 1, 0, size)
    rows = np.arange(low[0], high[0])[:, None] + 0.5
    cols = np.arange(low[1], high[1])[None, :] + 0.5
    inside = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
    image[low[0]:high[0], low[1]:high[1]][inside] = colour


def render_rgb(positions: np.ndarray, sites: np.ndarray, values: np.ndarray, size: int = 400,
               trails: np.ndarray | None = None) -> np.ndarray:
    """The world as a (size, size, 3) uint8 image, north up: world point (x, y) falls in pixel
    row `(WORLD_HIGH - y) / 20 * size`, column `(x - WORLD_LOW) / 20 * size`.

    positions: (n_agents, 2) agent positions; sites (n_sites, 2) and values (n_sites,) as from
    `reward_sites`; trails: optional (T, n_agents, 2) past positions, drawn as small pale dots.
    """
    positions = _check_points("positions", positions).reshape(-1, OBS_DIM)
    sites = _check_points("sites", sites).reshape(-1, OBS_DIM)
    if size < 1:
        raise ValueError(f"size = {size!r}: must be >= 1 pixel")
    pixels_per_unit = size / (WORLD_HIGH - WORLD_LOW)

    def to_pixel(point: np.ndarray) -> np.ndarray:
        return np.array([WORLD_HIGH - point[1], point[0] - WORLD_LOW]) * pixels_per_unit

    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for site, colour in zip(sites, site_colours(values)):
        _paint_disc(image, to_pixel(site), COLLECTION_RADIUS * pixels_per_unit, colour)
    colours = agent_colours(len(positions))
    if trails is not None:
        trails = _check_points("trails", trails)
        pale = ((colours.astype(np.float64) + BACKGROUND) / 2).astype(np.uint8)
        for frame in trails:
            for point, colour in zip(frame, pale):
                _paint_disc(image, to_pixel(point), max(TRAIL_RADIUS * pixels_per_unit, 1.0), colour)
    for point, colour in zip(positions, colours):
        _paint_disc(image, to_pixel(point), max(AGENT_RADIUS * pixels_per_unit, 2.0), colour)
    return image


def render_figure(positions: np.ndarray, sites: np.ndarray, values: np.ndarray, ax: Any = None) -> Any:
    """The same picture as a matplotlib figure (needs the 'plot' extra); draws on `ax` when given.
    Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    positions = _check_points("positions", positions).reshape(-1, OBS_DIM)
    sites = _check_points("sites", sites).reshape(-1, OBS_DIM)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    for site, colour in zip(sites, site_colours(values)):
        ax.add_patch(Circle(tuple(site), COLLECTION_RADIUS, color=colour / 255.0))
    ax.scatter(positions[:, 0], positions[:, 1], c=agent_colours(len(positions)) / 255.0, zorder=3)
    ax.set(xlim=(WORLD_LOW, WORLD_HIGH), ylim=(WORLD_LOW, WORLD_HIGH), aspect="equal")
    return ax.figure


class Window:
    """A matplotlib window that shows successive RGB frames (TeamEnv's "human" render mode)."""

    def __init__(self, fps: float):
        self.fps = fps
        self.artist: Any = None

    def show(self, frame: np.ndarray) -> None:
        import matplotlib.pyplot as plt

        if self.artist is None:
            _, ax = plt.subplots(figsize=(5, 5))
            ax.set_axis_off()
            self.artist = ax.imshow(frame)
        else:
            self.artist.set_data(frame)
        plt.pause(1.0 / self.fps)

    def close(self) -> None:
        import matplotlib.pyplot as plt

        if self.artist is not None:
            plt.close(self.artist.figure)
            self.artist = None
