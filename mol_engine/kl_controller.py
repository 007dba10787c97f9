"""The KL set-point (``kl_weight: auto``): a controller that sets λ so that the KL to the base settles near
``target_general_kl``, the drift the user accepts, as PPO's adaptive KL controller does for RLHF (Ziegler et al.
2019, "Fine-Tuning Language Models from Human Preferences").

Its update rule, once per optimizer step, from the step's KL on the general rows (token-averaged over all ranks,
the figure the step already reads from the device, so every rank computes the same λ with no further sync):

    running ← kl                                      on the first step
    running ← EMA_DECAY · running + (1 − EMA_DECAY) · kl   after it
    error   = clip(running / target − 1, −MAX_ERROR, MAX_ERROR)
    λ       ← clip(λ · (1 + error · n_steps / HORIZON), MIN_WEIGHT, MAX_WEIGHT)

starting from λ = INITIAL_WEIGHT (1, MoL's default). A KL above the target raises λ (a stronger pull to the base),
one below lowers it (more room to learn the domain); the error is clipped so one noisy step moves λ by at most
MAX_ERROR / HORIZON (0.4%), i.e. proportional control in log space. The new λ weighs the *next* step's KL term.
Its state (λ, the running KL) is kept in each checkpoint, so a resumed run goes on exactly as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

INITIAL_WEIGHT = 1.0
MIN_WEIGHT = 0.01  # λ's bounds: a floor keeps some anchor, a ceiling keeps the CE term from vanishing
MAX_WEIGHT = 100.0
MAX_ERROR = 0.2  # PPO's clip of the proportional error
HORIZON = 50.0  # steps: the error moves log λ by about error / HORIZON per step (λ can grow 0.4% a step)
EMA_DECAY = 0.5  # the running KL: a short EMA of the per-step KL, which is noisy on small batches


@dataclass
class KLController:
    """λ and the running KL; :meth:`update` applies one step's KL, :meth:`state`/:meth:`from_state` checkpoint it."""

    target: float
    weight: float = INITIAL_WEIGHT
    running: float | None = None  # None before the first step

    def update(self, kl: float, n_steps: int = 1) -> float:
        """Apply one step's (all-ranks) KL on the general rows; returns the new λ, used from the next step."""
        self.running = kl if self.running is None else EMA_DECAY * self.running + (1 - EMA_DECAY) * kl
        self.weight = next_weight(self.weight, self.running, self.target, n_steps)
        return self.weight

    def state(self) -> dict:
        """What a checkpoint keeps (JSON)."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict, target: float) -> KLController:
        """The controller a checkpoint kept; ``target`` is the spec's (a resumed job keeps its spec)."""
        return cls(target=target, weight=float(state["weight"]),
                   running=None if state.get("running") is None else float(state["running"]))


def next_weight(weight: float, running_kl: float, target: float, n_steps: int = 1) -> float:
    """λ after ``n_steps`` steps at ``running_kl``: the module's rule, clipped to [MIN_WEIGHT, MAX_WEIGHT]."""
    error = min(max(running_kl / target - 1, -MAX_ERROR), MAX_ERROR)
    return min(max(weight * (1 + error * n_steps / HORIZON), MIN_WEIGHT), MAX_WEIGHT)
