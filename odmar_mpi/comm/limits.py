"""Limits of the communication layer, declared once: the code enforces them and configuration validates
against them (this module imports neither MPI nor torch)."""

ROUND_SPAN = 1 << 16
"""Tags are call * ROUND_SPAN + round (modulo the MPI tag bound), so one call runs fewer rounds than this."""
MAX_ROUNDS = ROUND_SPAN - 1
"""Most gossip rounds in one consensus call."""
MIN_TOL = 1e-14
"""Smallest consensus tolerance: below float64 round-off of the disagreement measure it would never be met."""
