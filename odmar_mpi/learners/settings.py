"""Settings of the learners' own schedules, declared once (torch-free, so configuration can import them)."""

from __future__ import annotations

from dataclasses import dataclass

from odmar_mpi.settings import check_settings, setting

COMMUNICATION = ("neighbours", "self")
IMAGINED_REWARD = ("own", "neighbourhood")


@dataclass
class MambaConfig:
    """The `[mamba]` settings: when and how much MAMBA trains (its world model: `[world_model]`; its
    actor-critic: `[ppo]`); defaults follow MAMBA's SMAC configuration unless stated."""

    train_every: int = setting(25, "Environment steps between training phases (MAMBA trains after every episode; "
                                   "25 = one simple_spread episode).", unit="steps", low=1)
    model_updates: int = setting(1, "World-model gradient steps per training phase.", low=1)
    policy_updates: int = setting(1, "Imagination + PPO updates per training phase.", low=1)
    average_every: int = setting(0, "World-model gradient steps between averaging rounds with the neighbours, the "
                                    "actor and critic then averaged after every imagination + PPO round (closer to "
                                    "parameter sharing: less drift between the ranks); 0 = everything once, after "
                                    "the phase.", unit="steps", low=0)
    batch_size: int = setting(40, "Replayed sequences per model update and per imagination (MAMBA "
                                  "MODEL_BATCH_SIZE).", unit="sequences", low=1)
    sequence_length: int = setting(20, "Steps per replayed sequence (MAMBA SEQ_LENGTH).", unit="steps", low=1)
    buffer_size: int = setting(100_000, "Replay capacity in steps (preallocated; MAMBA: 250000-500000; about 4.5 KB "
                                        "per step at MAMBA's sizes with 4 neighbours).", unit="steps", low=1)
    imagine_batch_size: int = setting(0, "Replayed windows per imagination + PPO update; 0 = batch_size (MAMBA "
                                         "BATCH_SIZE). Starts = windows x rows kept by burn_in.",
                                      unit="sequences", low=0)
    burn_in: int = setting(0, "Imagination starts only from rows whose posterior has filtered at least this many "
                              "steps of the window, or whose episode started inside the window (a window starts "
                              "from the zero state, which the acting agent never has mid-episode); 0 = every row "
                              "(MAMBA).", unit="steps", low=0)
    imagined_reward: str = setting("own", "What the actor-critic maximises in imagination: 'own' (the agent's "
                                          "predicted reward, the reward it observes) or 'neighbourhood' (the mean of "
                                          "the reward head over the imagined neighbourhood, MAMBA's team mean).",
                                   choices=IMAGINED_REWARD)
    communication: str = setting("neighbours", "What the communication block attends over: 'neighbours' (self and "
                                               "graph neighbours) or 'self' (the ablation without communication).",
                                 choices=COMMUNICATION)

    def __post_init__(self) -> None:
        check_settings(self, "mamba.")
