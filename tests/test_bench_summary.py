"""`make bench`'s closing table: every ratio a benchmark wrote, beside its goal, and the benchmarks that did not run."""

import json

from benchmarks.summary import BENCHMARKS, summary


def test_every_ratio_at_any_depth_is_listed_with_its_goal_and_missing_benchmarks_say_so(tmp_path):
    (tmp_path / "mix.json").write_text(json.dumps({"median_seconds": {"granite_mix": 3.4}, "ratio_granite_vs_zstd": 0.107,
                                                   "goal": ">= 0.5"}))
    (tmp_path / "sft.json").write_text(json.dumps({"ratio_same_setting": {"fp32": 3.46, "bf16": 4.88}, "ratio_best_vs_best": 4.29,
                                                   "best": {"granite": "bf16"}, "goal": ">= 1.2"}))
    (tmp_path / "filter.json").write_text(json.dumps({"near_dedup": {"granite": {"seconds": 1.0}, "speed_ratio": 5.04},
                                                      "peak_rss": {"mb": 62.3}}))
    (tmp_path / "tokenize.json").write_text(json.dumps({"ratio_granite_vs_datatrove": 1.97, "same_output": True,
                                                        "goals": {"vs_datatrove": ">= 1.2"}}))
    (tmp_path / "memory.json").write_text(json.dumps({"runs": [], "goal": "flat"}))
    (tmp_path / "rl.json").write_text(json.dumps({"granite": {"generation_share": 0.41}, "time_ratio": 0.37,
                                                  "calibration": 0.5, "goal": "<= 0.5x"}))
    rows = {(bench, measure): (value, goal) for bench, measure, value, goal in summary(tmp_path)}
    assert rows[("mix", "ratio_granite_vs_zstd")] == ("0.11x", ">= 0.5")
    assert rows[("sft", "ratio_same_setting.fp32")] == ("3.46x", ">= 1.2")
    assert rows[("sft", "ratio_same_setting.bf16")] == ("4.88x", ">= 1.2")
    assert rows[("sft", "ratio_best_vs_best")] == ("4.29x", ">= 1.2")
    assert rows[("filter", "near_dedup.speed_ratio")] == ("5.04x", "")
    assert rows[("tokenize", "ratio_granite_vs_datatrove")] == ("1.97x", "vs_datatrove >= 1.2")
    assert rows[("memory", "(no ratio: see the JSON)")] == ("", "flat")
    assert ("mix", "median_seconds.granite_mix") not in rows and ("filter", "peak_rss.mb") not in rows
    assert rows[("rl", "time_ratio")] == ("0.37x", "<= 0.5x")  # a share or a word that only spells "ratio" is no ratio
    assert ("rl", "granite.generation_share") not in rows and ("rl", "calibration") not in rows
    ran = {"mix", "sft", "filter", "tokenize", "memory", "rl"}
    assert {bench for bench, measure in rows if measure.startswith("missing")} == set(BENCHMARKS) - ran
    assert rows[("gpu", "not run here: needs an NVIDIA GPU (python benchmarks/bench_gpu.py)")] == ("", "")


def test_the_gpu_check_is_listed_with_its_device_when_it_ran(tmp_path):
    (tmp_path / "gpu.json").write_text(json.dumps({"device": "NVIDIA H200", "goal": "MFU >= 0.45",
                                                   "ratio": {"pretrain_mfu_of_measured_peak": 0.532,
                                                             "bf16_vs_fp32_loss_gap": 0.0066}}))
    rows = {(bench, measure): value for bench, measure, value, goal in summary(tmp_path)}
    assert rows[("gpu (NVIDIA H200)", "ratio.pretrain_mfu_of_measured_peak")] == "0.53x"
    assert rows[("gpu (NVIDIA H200)", "ratio.bf16_vs_fp32_loss_gap")] == "0.0066x"
