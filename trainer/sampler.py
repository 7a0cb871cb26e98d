"""The order in which GRPO draws prompts: seeded per-epoch shuffles with a resumable cursor."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class PromptCursor:
    """Position in an endless sequence of seeded shuffles of `size` items.

    The permutation of epoch e depends only on (seed, e), so a cursor restored from a checkpoint continues
    with exactly the items an uninterrupted run would have drawn.

    >>> c = PromptCursor(size=3, seed=0)
    >>> batch = c.take(2) + c.take(2)
    >>> sorted(batch[:3]) == [0, 1, 2]
    True
    """

    size: int
    seed: int = 0
    epoch: int = 0
    index: int = 0

    def _order(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            order = self._order(self.epoch)
            take = min(k - len(out), self.size - self.index)
            out.extend(order[self.index : self.index + take])
            self.index += take
            if self.index == self.size:
                self.epoch, self.index = self.epoch + 1, 0
        return out

    def state(self) -> dict:
        return {"size": self.size, "seed": self.seed, "epoch": self.epoch, "index": self.index}

    @classmethod
    def from_state(cls, state: dict, size: int | None = None) -> PromptCursor:
        """Restore a saved cursor; `size`, when given, is the pool the run now draws from, and a saved
        cursor over another pool (the prefilter turned on or off, or another RL set) is an error, since
        its positions would name other images."""
        if size is not None and state["size"] != size:
            raise ValueError(
                f"the checkpoint's prompt cursor runs over {state['size']} images but this run draws from "
                f"{size} (grpo.prefilter, grpo.data or grpo.limit changed since it was saved): resume with "
                "the saved run's settings or start a new run_dir"
            )
        return cls(**state)
