"""Learning-rate schedules as small named objects (OLMo-core's idea).

Each schedule maps progress — a count of steps or tokens, and the run's total — to a learning rate.
A recipe names one (`[phases.schedule] name = "power"`) with its constants; `build_schedule` turns
that table into an object. Warmup wraps any of them. Progress may start above zero: a phase that
continues from another (IBM's power schedule counts every token seen since phase 1) passes the
tokens its parent already saw as `offset`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from granite_cli.errors import BadInput


@dataclass
class Constant:
    peak_lr: float

    def lr(self, n: float, total: float) -> float:
        return self.peak_lr


@dataclass
class Linear:
    """Linear decay from peak to final_lr_ratio·peak at the end of the run (IBM phase 4: to 0)."""

    peak_lr: float
    final_lr_ratio: float = 0.0

    def lr(self, n: float, total: float) -> float:
        p = _progress(n, total)
        return self.peak_lr * (1 - p * (1 - self.final_lr_ratio))


@dataclass
class Cosine:
    peak_lr: float
    final_lr_ratio: float = 0.1

    def lr(self, n: float, total: float) -> float:
        p = _progress(n, total)
        floor = self.final_lr_ratio
        return self.peak_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


@dataclass
class Exponential:
    """Exponential decay from peak, ending exactly at final_lr_ratio·peak (0 allowed: IBM phase 5).

    lr = peak·(r^p − p·r) + peak·p·final with r = max(final, 1e-3): exponential in shape, and the
    small linear correction makes the last step land on `final` even when `final` is 0.
    """

    peak_lr: float
    final_lr_ratio: float = 0.0

    def lr(self, n: float, total: float) -> float:
        p = _progress(n, total)
        r = max(self.final_lr_ratio, 1e-3)
        return self.peak_lr * (r ** p - p * r + p * self.final_lr_ratio)


@dataclass
class Power:
    """IBM's power scheduler: lr = min(peak, a·n^b), n counting tokens seen (b ≈ −0.5).

    Independent of the run's total, so a phase can continue it where the previous phase stopped.
    """

    peak_lr: float
    a: float = 4.0
    b: float = -0.51

    def lr(self, n: float, total: float) -> float:
        return min(self.peak_lr, self.a * max(n, 1.0) ** self.b)


@dataclass
class WSD:
    """Warmup-stable-decay: constant, then linear decay over the last decay_fraction of the run."""

    peak_lr: float
    decay_fraction: float = 0.2
    final_lr_ratio: float = 0.0

    def lr(self, n: float, total: float) -> float:
        start = total * (1 - self.decay_fraction)
        if n <= start:
            return self.peak_lr
        return Linear(self.peak_lr, self.final_lr_ratio).lr(n - start, total - start)


@dataclass
class Warmup:
    """Linear warmup over `warmup` units (counted from the run's own start), then `then`."""

    then: object
    warmup: float
    offset: float = 0.0

    def lr(self, n: float, total: float) -> float:
        own = n - self.offset
        target = self.then.lr(n, total)
        if self.warmup > 0 and own < self.warmup:
            return target * (own + 1) / (self.warmup + 1)
        return target


SCHEDULES = {"constant": Constant, "linear": Linear, "cosine": Cosine, "exponential": Exponential,
             "power": Power, "wsd": WSD}


def _progress(n: float, total: float) -> float:
    return min(max(n / total, 0.0), 1.0) if total > 0 else 1.0


def parse_amount(value, total: float) -> float:
    """A warmup amount: a count (100), a percentage of the run ("2%"), or 0."""
    if isinstance(value, str) and value.strip().endswith("%"):
        return total * float(value.strip()[:-1]) / 100
    from granite_cli.recipe import parse_count

    return float(parse_count(value, "warmup"))


def build_schedule(spec: dict, peak_lr: float | None, total: float, offset: float = 0.0):
    """A schedule object from a recipe table: {name, peak_lr?, warmup?, constants...}.

    `peak_lr` (a flag, or the parent's last LR when a phase continues) fills in a missing peak.
    Progress for decays is measured within this run: n is shifted by `offset` except for power,
    which counts from the very first token.
    """
    spec = dict(spec)
    name = spec.pop("name", "constant")
    if name not in SCHEDULES:
        raise BadInput(f"unknown LR schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
    warmup = parse_amount(spec.pop("warmup", 0), total)
    spec.pop("unit", None)
    spec["peak_lr"] = float(peak_lr if peak_lr is not None else spec.get("peak_lr", 0) or 0)
    if spec["peak_lr"] <= 0:
        raise BadInput(f"schedule {name!r} needs a peak LR: set peak_lr in the recipe or pass --lr")
    try:
        inner = SCHEDULES[name](**spec)
    except TypeError as err:
        raise BadInput(f"schedule {name!r}: {err}") from err
    shifted = inner if name == "power" else _Shifted(inner, offset)
    return Warmup(shifted, warmup, offset)


@dataclass
class _Shifted:
    inner: object
    offset: float

    def lr(self, n: float, total: float) -> float:
        return self.inner.lr(n - self.offset, total)


def lineage_tokens_and_lr(lineage: list[dict]) -> tuple[int, Optional[float]]:
    """Tokens trained on so far along the lineage, and the last LR it used (a continuing schedule starts there)."""
    tokens = sum(entry.get("metrics", {}).get("tokens", 0) for entry in lineage)
    last_lr = lineage[-1].get("metrics", {}).get("final_lr") if lineage else None
    return tokens, last_lr


def continue_schedule(table: dict, lineage: list[dict], total_tokens: int, lr, warmup, schedule_name):
    """A phase's LR schedule (the recipe's `table`, flags on top), continuing the lineage's token count and last LR:
    (schedule, tokens already trained along the lineage)."""
    offset, parent_lr = lineage_tokens_and_lr(lineage)
    table = dict(table)
    if schedule_name and schedule_name != table.get("name", "constant"):
        # another schedule: the recipe's constants belong to its own (power's a and b, ...); the new one's defaults apply
        table = {key: table[key] for key in ("warmup", "peak_lr") if key in table} | {"name": schedule_name}
    if warmup is not None:
        table["warmup"] = warmup
    peak = lr if lr is not None else (table.get("peak_lr") or parent_lr)
    return build_schedule(table, peak, total_tokens, offset), offset
