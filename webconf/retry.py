"""Retry delays with exponential backoff, shared by every wing that retries over the network.

The client's channel reconnects and the focus's revocation retries both wait `initial`
doubling to `maximum` between attempts. With jitter on (the default) each delay is drawn from
[d/2, d] ("equal jitter"), which spreads the retries of many peers after a server restart.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Retry delays: `initial` doubling to `maximum`, each drawn from [d/2, d] when jittered.

    Jitter comes from the system CSPRNG only (unless a test passes `rng`), so that no seeded
    module-level generator is shared or predictable.
    """

    def __init__(self, initial: float = 0.2, maximum: float = 10.0,
                 rng: random.Random | None = None, *, jitter: bool = True) -> None:
        self.initial = initial
        """The first delay's ceiling, in seconds."""
        self.maximum = maximum
        """The cap on every later delay's ceiling, in seconds."""
        self.rng = rng or random.SystemRandom()
        """Where the jitter comes from."""
        self.jitter = jitter
        """False: every delay is its ceiling exactly (deterministic spacing)."""
        self.attempt = 0
        """How many delays have been handed out since the last `reset()`."""

    def next_delay(self) -> float:
        """The delay to wait before the next attempt; each call counts one attempt."""
        ceiling = min(self.maximum, self.initial * float(1 << min(self.attempt, 62)))
        self.attempt += 1
        if not self.jitter:
            return ceiling
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        """Start again from `initial` (after a success, or a connection that proved stable)."""
        self.attempt = 0
