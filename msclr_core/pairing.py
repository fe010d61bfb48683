"""Which skeleton convention feeds the query and which the key, batch by batch.

The official code drew one (q, k) pair per DataLoader worker per epoch in `worker_init_fn`
(msclr-method.md §1.2, §6.4): it crashed with num_workers=0 and saw only ~#workers pairs
per epoch. Here a pair is drawn per batch, as a pure function of (seed, epoch, step): every
rank computes the same pair without communicating, and a resumed run replays the same
pairs, so there is nothing to checkpoint.

Policies:
  full_random  q and k independent and uniform (the released configs; q == k possible).
  half_random  with p = 0.5 q = anchor and k uniform, otherwise k = anchor and q uniform
               (the official `full_random_skeleton: False`, anchor = ntu-rgb+d there).
  all_pairs    cycles through every ordered pair, each cycle in a fresh seeded order, so
               every pair occurs equally often (a balanced, lower-variance schedule).
With allow_same=False the pair never has q == k. A single convention always gives (c, c):
plain single-skeleton AimCLR/SkeletonCLR. warmup_epochs=W makes epochs 1..W same-convention
(the drawn query convention on both sides: plain instance discrimination per convention
first), and the policy's pairs start at epoch W + 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import ConfigError

POLICIES = ("full_random", "half_random", "all_pairs")

# Distinct stream tags, so that the draws of different policies never share a seed.
_TAG = {"full_random": 0xF0, "half_random": 0xA1, "all_pairs": 0xC3}


class PairSchedule:
    def __init__(
        self,
        conventions: Sequence[str],
        policy: str = "full_random",
        allow_same: bool = True,
        anchor: str | None = None,
        seed: int = 0,
        warmup_epochs: int = 0,
    ):
        if isinstance(conventions, str):
            conventions = [conventions]
        self.conventions = list(conventions)
        if not self.conventions:
            raise ConfigError("conventions: at least one skeleton convention is needed for pairing")
        if len(set(self.conventions)) != len(self.conventions):
            raise ConfigError(f"conventions: duplicate entries in {self.conventions}")
        if policy not in POLICIES:
            raise ConfigError(f"pairing policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if not allow_same and len(self.conventions) == 1:
            raise ConfigError(
                f"allow_same=False needs at least two conventions, got only {self.conventions[0]!r}"
            )
        if anchor is not None and anchor not in self.conventions:
            raise ConfigError(f"anchor {anchor!r} is not one of the conventions {self.conventions}")
        if isinstance(warmup_epochs, bool) or int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs!r}")
        self.policy, self.allow_same, self.seed = policy, bool(allow_same), int(seed)
        self.warmup_epochs = int(warmup_epochs)
        self.anchor = anchor if anchor is not None else self.conventions[0]
        n = len(self.conventions)
        self.all_pairs = [(q, k) for q in range(n) for k in range(n) if self.allow_same or q != k]

    def pair(self, epoch: int, step: int) -> tuple[str, str]:
        """(q_conv, k_conv) for this step of this epoch; the same on every call and rank."""
        if epoch < 0 or step < 0:
            raise ValueError(f"epoch and step must be >= 0, got epoch={epoch}, step={step}")
        if 1 <= epoch <= self.warmup_epochs:
            q = self._drawn_pair(epoch, step)[0]
            return q, q
        return self._drawn_pair(epoch, step)

    def _drawn_pair(self, epoch: int, step: int) -> tuple[str, str]:
        names = self.conventions
        if len(names) == 1:
            return names[0], names[0]
        if self.policy == "all_pairs":
            cycle, pos = divmod(step, len(self.all_pairs))
            order = self._rng(epoch, cycle).permutation(len(self.all_pairs))
            q, k = self.all_pairs[order[pos]]
            return names[q], names[k]
        rng = self._rng(epoch, step)
        if self.policy == "full_random":
            q = int(rng.integers(len(names)))
            return names[q], names[self._other(rng, q)]
        # half_random: the anchor is on one side, the other side is uniform.
        a = names.index(self.anchor)
        anchor_is_query = rng.random() < 0.5
        other = names[self._other(rng, a)]
        return (self.anchor, other) if anchor_is_query else (other, self.anchor)

    def pairs_for_epoch(self, epoch: int, steps: int) -> list[tuple[str, str]]:
        return [self.pair(epoch, s) for s in range(steps)]

    def _rng(self, epoch: int, index: int) -> np.random.Generator:
        # SeedSequence hashes the whole tuple, so neighbouring (epoch, step) are independent.
        return np.random.default_rng([self.seed, _TAG[self.policy], int(epoch), int(index)])

    def _other(self, rng: np.random.Generator, fixed: int) -> int:
        """Uniform index for the free side; with allow_same=False uniform over the others
        (drawing from n-1 and skipping `fixed` has the same law as redrawing until != fixed)."""
        n = len(self.conventions)
        if self.allow_same:
            return int(rng.integers(n))
        j = int(rng.integers(n - 1))
        return j + 1 if j >= fixed else j

    def __repr__(self) -> str:
        return (
            f"PairSchedule({self.conventions}, policy={self.policy!r}, allow_same={self.allow_same}, "
            f"anchor={self.anchor!r}, seed={self.seed}, warmup_epochs={self.warmup_epochs})"
        )
