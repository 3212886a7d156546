"""--profile A:B: where a training step's time goes, measured over steps A to B of the run.

Two views, because each answers what the other cannot:
- regions: the wall time of each part of a step (the batch: data, or rl's rollouts; forward with the loss;
  backward; the optimizer with clipping), the device synchronised at each region's end so GPU work is counted
  where it was launched. The profiled steps run a little slower for it; the other steps are untouched.
- operators: torch.profiler's self time of each operator (each kernel on a GPU), summed into families by name
  (matmul, attention, loss head, optimizer, norm, communication, compiled graph, other) and listed, largest first.
  A kernel's name says what it computes, not which layer asked: the projections of attention, the MLP and the
  output head are all `matmul`. On a CPU a compiled graph is one call whose fused code the profiler does not see.

Written beside the checkpoint (`OUT.profile/`, like `OUT.steps/`, outside what a user copies to share the model)
as soon as step B ends, one set a process: `rank-R.summary.json` (both views) and `rank-R.trace.json` (the whole
timeline, for https://ui.perfetto.dev or chrome://tracing). Process 0 prints the tables. A run resumed after step A
profiles nothing (a window cut in two would mix two processes' figures).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import statistics
import time
from pathlib import Path
from typing import Optional

from granite_cli.errors import BadInput

REGIONS = ("batch", "forward", "backward", "optimizer")
FAMILIES = (  # the first pattern an operator's name matches names its family
    ("compiled graph", r"CompiledFxGraph"),  # on a CPU, a torch.compile'd graph's call: its fused code is not seen inside
    ("communication", r"nccl|all_?reduce|reduce_scatter|all_?gather|c10d"),
    ("attention", r"flash|fmha|attention|sdpa"),
    ("loss head", r"logsumexp|log_softmax|cross_entropy|nll_loss|liger"),
    ("optimizer", r"adam|foreach|multi_tensor"),
    ("matmul", r"gemm|aten::(mm|addmm|bmm|matmul|linear)\b|cutlass|xmma|nvjet|cublas|sm\d\d_|ampere_|hopper_"),
    ("norm", r"rms|norm|rsqrt"),
)
TOP = 15


def parse_steps(text: str, steps: int) -> tuple[int, int]:
    """`--profile A:B` (or `A`, one step) as (A, B): steps of this run, counted from 1 as the metrics count them."""
    match = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", text)
    if not match:
        raise BadInput(f"--profile {text!r}: give the steps to profile as FIRST:LAST (e.g. 4:6), or one step")
    first, last = int(match[1]), int(match[2] or match[1])
    if not 1 <= first <= last:
        raise BadInput(f"--profile {text}: the steps count from 1 and FIRST must not be after LAST")
    if last > steps:
        raise BadInput(f"--profile {text}: the run has {steps} steps")
    return first, last


def family(name: str) -> str:
    return next((label for label, pattern in FAMILIES if re.search(pattern, name, re.IGNORECASE)), "other")


class StepProfiler:
    """Times the regions of steps first..last and records torch.profiler over them; a no-op outside them."""

    def __init__(self, steps: Optional[tuple[int, int]], out: Optional[Path], device, rank: int = 0, main: bool = True):
        self.first, self.last = steps or (0, -1)
        self.out, self.device, self.rank, self.main = out, device, rank, main
        self.profiler = None
        self.region_seconds = dict.fromkeys(REGIONS, 0.0)  # summed over the profiled steps
        self.step_seconds: list[float] = []
        if steps and main and out is not None:
            shutil.rmtree(out, ignore_errors=True)  # an earlier run's; before any process can reach step `first`

    @property
    def active(self) -> bool:
        return self.profiler is not None

    @contextlib.contextmanager
    def step(self, number: int):
        """Run step `number` (counted from 1), profiled when it is in the window."""
        if not self.first <= number <= self.last:
            yield
            return
        import torch.profiler as tp

        if number == self.first:
            activities = [tp.ProfilerActivity.CPU] + ([tp.ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            self.profiler = tp.profile(activities=activities)
            self.profiler.start()
        if not self.active:  # a run resumed inside the window: its first steps ran in an earlier process
            yield
            return
        self._sync()
        started = time.perf_counter()
        yield
        self._sync()
        self.step_seconds.append(time.perf_counter() - started)
        if number == self.last:
            self.profiler.stop()
            self.write()
            self.profiler = None

    @contextlib.contextmanager
    def region(self, name: str):
        """Time a region of the step (summed over its micro-batches) and mark it on the profiler's timeline."""
        if not self.active:
            yield
            return
        import torch.profiler as tp

        started = time.perf_counter()
        with tp.record_function(f"granite: {name}"):
            yield
        self._sync()
        self.region_seconds[name] += time.perf_counter() - started

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ what it writes
    def summary(self) -> dict:
        """Both views as seconds a step (means over the profiled steps), and each one's share."""
        n = len(self.step_seconds)
        step = statistics.fmean(self.step_seconds)
        regions = {name: seconds / n for name, seconds in self.region_seconds.items()}
        regions["rest of the step"] = max(step - sum(regions.values()), 0.0)
        device_time = self.device.type == "cuda"
        operators = self.operators(device_time)
        total = sum(seconds for _, _, seconds in operators) or 1e-12
        families: dict[str, float] = {}
        for name, _, seconds in operators:
            kind = family(name)
            families[kind] = families.get(kind, 0.0) + seconds / n
        return {
            "steps": [self.first, self.last], "rank": self.rank, "device": str(self.device),
            "step_seconds": step, "regions_seconds": regions,
            "operator_time": "self device time of each kernel" if device_time else "self CPU time of each operator",
            "operator_seconds": total / n,
            "families_seconds": dict(sorted(families.items(), key=lambda kv: -kv[1])),
            "top": [{"name": name, "family": family(name), "calls": calls // n, "seconds": seconds / n,
                     "share": seconds / total} for name, calls, seconds in operators[:TOP]],
        }

    def operators(self, device_time: bool) -> list[tuple[str, int, float]]:
        """(name, calls, seconds) of every operator, largest self time first; our region markers left out. On a GPU
        the kernels themselves: an operator and the kernel it launches both carry the kernel's time, so summing both
        would count it twice (where a profiler lists no kernels apart, the operators' own device time)."""
        from torch.autograd import DeviceType

        events = [e for e in self.profiler.key_averages() if not (e.is_user_annotation or e.key.startswith("granite: "))]
        if not device_time:
            rows = [(e.key, e.count, e.self_cpu_time_total / 1e6) for e in events]
        else:
            kernels = [e for e in events if e.device_type != DeviceType.CPU] or events
            rows = [(e.key, e.count, e.self_device_time_total / 1e6) for e in kernels]
        return sorted((row for row in rows if row[2] > 0), key=lambda row: -row[2])

    def write(self) -> None:
        from granite_cli.data.atomic import atomic_path

        summary = self.summary()
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.out / f"rank-{self.rank}.summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
        with atomic_path(self.out / f"rank-{self.rank}.trace.json") as tmp:
            self.profiler.export_chrome_trace(str(tmp))
        if self.main:
            from granite_cli.console import console

            console.print(summary_table(summary))
            console.print(f"profile of steps {self.first}-{self.last} written to [bold]{self.out}[/]")


def summary_table(summary: dict):
    """The regions, the families and the top operators, each with its time a step and its share."""
    from rich.table import Table

    first, last = summary["steps"]
    table = Table(title=f"where a step's time goes (steps {first}-{last}, {summary['step_seconds']:.3f} s a step)",
                  title_justify="left")
    table.add_column("", no_wrap=True, overflow="ellipsis", max_width=48)
    for column in ("calls", "s / step", "share"):
        table.add_column(column, justify="right", no_wrap=True)
    for name, seconds in summary["regions_seconds"].items():
        table.add_row(name, "", f"{seconds:.4f}", f"{seconds / summary['step_seconds']:.1%}")
    table.add_section()
    operator_total = summary["operator_seconds"] or 1e-12
    table.add_row(f"[bold]{summary['operator_time']}[/]", "", f"{operator_total:.4f}", "100%")
    for name, seconds in summary["families_seconds"].items():
        table.add_row(f"  {name}", "", f"{seconds:.4f}", f"{seconds / operator_total:.1%}")
    table.add_section()
    for row in summary["top"][:8]:
        table.add_row(f"  {row['family']}: {row['name']}", str(row["calls"]), f"{row['seconds']:.4f}", f"{row['share']:.1%}")
    return table
