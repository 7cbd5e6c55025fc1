"""When `make run`'s supervisor restarts a service that died: after 1 s, then 2, 4, 8 ... up to 60 s while it keeps
dying; back to 1 s once it has been healthy for two minutes. A service restarted `limit` times within `window`
seconds that dies again is given up on (state `failed`): a crash loop only burns the two cores the rest of the
stack needs, and its log says why. The other services keep running; `make run` again (or fixing the cause and
restarting the stack) brings it back. Pure bookkeeping, clock passed in, so it is tested without processes."""

from __future__ import annotations

from dataclasses import dataclass, field

STATES = ("starting", "running", "restarting", "failed", "stopped")


@dataclass(frozen=True)
class RestartPolicy:
    first_delay: float = 1.0
    max_delay: float = 60.0
    healthy_reset: float = 120.0  # healthy this long: the next death waits first_delay again
    limit: int = 5
    window: float = 600.0


@dataclass
class Supervision:
    """One service's supervision state: what stack.json shows of it, and what decides its next restart."""

    state: str = "starting"
    restarts: int = 0
    last_exit: int | None = None
    last_restart_at: float | None = None  # wall-clock time, for stack.json
    launched_at: float = 0.0  # monotonic
    healthy_since: float | None = None
    due: float | None = None  # monotonic time of the next start, while restarting
    streak: int = 0  # deaths since it was last healthy for healthy_reset seconds
    recent: list[float] = field(default_factory=list)  # monotonic times of restarts within the window

    def launched(self, now: float) -> None:
        self.state, self.launched_at, self.healthy_since, self.due = "starting", now, None, None

    def healthy(self, now: float) -> None:
        self.state, self.healthy_since = "running", now

    def tick(self, now: float, policy: RestartPolicy) -> None:
        if self.state == "running" and now - (self.healthy_since or now) >= policy.healthy_reset:
            self.streak = 0

    def died(self, code: int | None, now: float, policy: RestartPolicy) -> float | None:
        """Record a death (code None: killed for not becoming healthy in time). Returns the delay before the next
        start, or None when the service is given up on."""
        self.last_exit, self.healthy_since = code, None
        self.recent = [t for t in self.recent if now - t < policy.window]
        if len(self.recent) >= policy.limit:
            self.state, self.due = "failed", None
            return None
        delay = min(policy.first_delay * 2 ** self.streak, policy.max_delay)
        self.streak += 1
        self.state, self.due = "restarting", now + delay
        return delay

    def restarted(self, now: float, wall: float) -> None:
        self.restarts += 1
        self.recent.append(now)
        self.last_restart_at = wall
        self.launched(now)
