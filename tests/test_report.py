"""granite report: the report card reads what the stages left and says what it could not draw."""

from __future__ import annotations

import base64
import json

import pytest

from conftest import granite


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def write_lines(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def small_run(root):
    """Two pre-training phases, an SFT run, a filter audit, one RL stage and two evaluations: what `make all` leaves."""
    for phase, start in ((1, 6.0), (2, 4.0)):
        write_lines(root / f"checkpoints/pretrain-phase-{phase}/metrics.jsonl",
                    [{"step": s, "tokens": 1000 * s, "loss": start - 0.1 * s, "lr": 0.01 / s} for s in range(1, 6)])
        write_json(root / f"checkpoints/pretrain-phase-{phase}/lineage.json",
                   [{"stage": "pretrain", "arguments": {"phase": phase}, "metrics": {"tokens": 5000, "steps": 5, "loss": 5.0},
                     "finished": f"2026-01-0{phase}T00:00:00+00:00"}])
    write_lines(root / "checkpoints/sft/metrics.jsonl", [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "val_loss": 1.6}])
    write_lines(root / "filter/audit.jsonl", [{"verdict": "accept", "reasons": []},
                                              {"verdict": "reject", "reasons": [{"rule": "leakage", "reason": "x"}]}])
    columns = [{"name": "sft", "domains": {"all": {"n": 2, "mean": 0.1}, "math": {"n": 2, "mean": 0.1}}},
               {"name": "rl-stage-1", "domains": {"all": {"n": 2, "mean": 0.3, "rewards": [0.1, 0.5]},
                                                  "math": {"n": 2, "mean": 0.3, "rewards": [0.1, 0.5]}}}]
    write_json(root / "checkpoints/rl-stage-1/lineage.json",
               [{"stage": "sft", "arguments": {}, "metrics": {"steps": 2, "loss": 1.5}, "finished": "2026-01-03T00:00:00+00:00"},
                {"stage": "rl", "arguments": {"stage": 1}, "metrics": {"regression": {"columns": columns}},
                 "finished": "2026-01-04T00:00:00+00:00"}])
    for name, stage, created, tasks in (
            ("sft", "sft", "2026-01-03T00:00:00.000+00:00", {"heldout": {"main_metric": "score", "value": 0.09}}),
            ("rl-stage-1-rl-reward", "rl stage 1", "2026-01-04T00:00:00.000+00:00",
             {"rl_reward:math": {"main_metric": "reward", "value": 0.3,
                                 "metrics": {"n": 2, "mean": 0.3, "change": 0.2, "ci_low": 0.05, "ci_high": 0.35}},
              "rl_reward:logic": {"main_metric": "reward", "value": 0.0,
                                  "metrics": {"n": 2, "mean": 0.0, "change": 0.0, "ci_low": 0.0, "ci_high": 0.0}}})):
        write_json(root / f"eval/{name}/results.json", {"stage": stage, "created": created, "tasks": tasks})


def test_report_writes_markdown_figures_and_one_self_contained_html(tmp_path):
    root = tmp_path / "run"
    small_run(root)
    granite("report", root, check=True)
    md = (root / "report/report.md").read_text()
    for figure in ("pretraining_loss.png", "rl_reward.png", "sft_filter.png"):
        assert f"](figures/{figure})" in md
        assert (root / "report/figures" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| sft | 9.00 |" in md and "| math | 0.300 (+0.200 [+0.050, +0.350]) |" in md  # a change carries its interval
    assert "| logic | 0.000 |" in md  # where no prompt's reward moved, the mean alone
    # what is not there is said, not drawn empty
    assert "Not drawn: no context extension" in md and "Not drawn: no RULER result" in md
    assert "## Lineage of the final model (rl-stage-1)" in md
    page = (root / "report/report.html").read_text()
    images = page.split('src="data:image/png;base64,')[1:]
    assert len(images) == 3 and all(base64.b64decode(i.split('"')[0])[:4] == b"\x89PNG" for i in images)


def test_the_rl_figure_bars_span_the_bootstrap_interval_of_each_mean():
    from stages.report import interval_of

    mean, down, up = interval_of({"n": 4, "mean": 0.5, "rewards": [0.0, 0.0, 1.0, 1.0]})
    assert mean == 0.5 and 0.2 < down <= 0.5 and 0.2 < up <= 0.5  # four coin flips: the mean is anywhere from 0 to 1
    assert interval_of({"n": 3, "mean": 0.2, "rewards": [0.2, 0.2, 0.2]}) == pytest.approx((0.2, 0.0, 0.0))  # no spread, no bar
    assert interval_of({"n": 3, "mean": 0.2}) == (0.2, 0.0, 0.0)  # an older lineage kept no per-prompt rewards


def test_report_of_a_directory_that_is_no_run_is_bad_input(tmp_path):
    result = granite("report", tmp_path)
    assert result.returncode == 2 and "not a run directory" in result.stderr.decode()
