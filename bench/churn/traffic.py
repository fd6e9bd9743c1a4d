"""The churn benchmark's traffic: a seeded fleet of Lambda applications with different habits.

Pure: a seed gives the same requests and the same container lifetimes every time. Time is
compressed 90-fold (`TIME_SCALE`): one second here stands for a minute and a half of a real
fleet, so 10 s is a 15-minute threshold and a 5 s pass interval a pass every 7.5 minutes.

A container holds one connection. A request goes to the most recently used idle container of
its application (as Lambda routes to warm environments); with none, a cold start opens one.
A container left idle longer than its lifetime is discarded without closing its connection,
as a real environment is, and is never used again.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

# Seconds of a real fleet per second of the benchmark.
TIME_SCALE = 90


@dataclass(frozen=True, slots=True)
class Habit:
    """How one application is invoked and how long its environments stay warm."""

    application: str
    # Poisson arrivals per second (between bursts, for a bursty one).
    rate: float = 0.0
    # A fixed period with jitter, for a scheduled function; None otherwise.
    period: tuple[float, float] | None = None
    # Mean seconds between bursts (exponential) and the size range of a burst.
    burst_every: float | None = None
    burst_size: tuple[int, int] = (0, 0)
    # Handler time after the query, holding the container (seconds, range).
    hold: tuple[float, float] = (0.05, 0.2)
    # How long an environment stays warm after its last request (seconds, range).
    lifetime: tuple[float, float] = (5.0, 15.0)


HABITS: tuple[Habit, ...] = (
    # A frequent, bursty API: a request every two seconds and bursts of various sizes; the
    # environments a small burst leaves idle wait for a larger one, if they live that long.
    Habit(
        "lambda:api",
        rate=0.5,
        burst_every=8.0,
        burst_size=(4, 20),
        hold=(0.3, 0.8),
        lifetime=(6.0, 24.0),
    ),
    # A sporadic webhook: a few deliveries at once now and then, sometimes after a long lull.
    Habit(
        "lambda:webhook",
        burst_every=10.0,
        burst_size=(1, 3),
        hold=(0.1, 0.3),
        lifetime=(10.0, 30.0),
    ),
    # A rare report: a long handler every half hour, its environment gone before the next.
    Habit("lambda:report", period=(20.0, 4.0), hold=(0.4, 0.6), lifetime=(5.0, 12.0)),
    # A cron whose environments die right after use: every session it leaves is dead at once.
    Habit("lambda:cron", period=(1.5, 0.2), hold=(0.05, 0.1), lifetime=(0.0, 0.0)),
)


@dataclass(frozen=True, slots=True)
class Request:
    """One invocation: when (seconds from the start), of which application, held how long."""

    at: float
    application: str
    hold: float


def requests(seed: int, duration: float, habits: tuple[Habit, ...] = HABITS) -> list[Request]:
    """Every request of `duration` seconds of traffic, in time order."""
    found: list[Request] = []
    for habit in habits:
        rng = random.Random(f"{seed}:{habit.application}:arrivals")
        found += [
            Request(at, habit.application, rng.uniform(*habit.hold))
            for at in _arrivals(habit, rng, duration)
        ]
    return sorted(found, key=lambda request: (request.at, request.application))


def lifetime(seed: int, habit: Habit, container: int) -> float:
    """How long container number `container` of the application stays warm after a request:
    drawn from the seed, so the same traffic gives every container the same life."""
    rng = random.Random(f"{seed}:{habit.application}:life:{container}")
    return rng.uniform(*habit.lifetime)


def _arrivals(habit: Habit, rng: random.Random, duration: float) -> list[float]:
    times: list[float] = []
    if habit.period is not None:
        period, jitter = habit.period
        at = rng.uniform(0, period)
        while at < duration:
            times.append(at)
            at += max(0.05, period + rng.uniform(-jitter, jitter))
    if habit.rate > 0:
        at = rng.expovariate(habit.rate)
        while at < duration:
            times.append(at)
            at += rng.expovariate(habit.rate)
    if habit.burst_every is not None:
        at = rng.expovariate(1 / habit.burst_every)
        while at < duration:
            size = rng.randint(*habit.burst_size)
            # A burst arrives within 0.3 s: more than the warm environments can take.
            times += [at + rng.uniform(0, 0.3) for _ in range(size)]
            at += max(habit.burst_every / 2, rng.expovariate(1 / habit.burst_every))
    return sorted(t for t in times if t < duration and not math.isnan(t))
