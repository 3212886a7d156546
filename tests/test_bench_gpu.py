"""benchmarks/bench_gpu.py is tested where there is no GPU: its loss-head comparison, its packed-row check, its table
and its part-by-part run in-process, the whole script with --smoke (every part small on the CPU) in the slow suite."""

from __future__ import annotations

import argparse
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO))
from benchmarks import bench_gpu  # noqa: E402


def test_the_loss_heads_agree_with_the_fp32_reference_across_several_chunks():
    # 2,048 entries: 8,192-token chunks, so a 20,000-token row is scored in three
    args = argparse.Namespace(vocab=2048, hidden=32, head_tokens=[20_000], head_repeats=1)
    row = bench_gpu.loss_head(args, torch.device("cpu"))["20000"]
    assert set(row) == {"whole logits", "granite chunked"}  # Liger's kernels need a GPU
    for measured in row.values():
        assert measured["loss_gap"] < 1e-5 and measured["hidden_grad_gap"] < 1e-5 and measured["weight_grad_gap"] < 1e-5
        assert measured["seconds"] > 0 and measured["peak_gib"] is None  # peak memory is read on CUDA only


def test_packed_rows_score_each_conversation_as_alone_and_the_table_reads():
    args = argparse.Namespace(preset="tiny-2m", vocab=512, seq_len=64, compile=False, micro_batch=2, sft_steps=3)
    sft = bench_gpu.packed_sft(args, torch.device("cpu"))
    assert sft["conversations_in_first_row"] > 1 and sft["max_logprob_gap_packed_vs_alone"] < 1e-4
    assert sft["trained_tokens_per_second"] > 0
    gap = bench_gpu.loss_gap([{"loss": 2.02}, {"loss": 1.5}], [{"loss": 2.0}, {"loss": 1.5}])
    assert gap["max_relative_gap"] == pytest.approx(0.01)
    head = {"4096": {"granite chunked": {"peak_gib": 0.5, "seconds": 0.01, "loss_gap": 1e-3, "hidden_grad_gap": 2e-3,
                                        "weight_grad_gap": 3e-3},
                     "liger fused": {"error": "RuntimeError: no kernel"}}}
    results = {"loss_head": head,
               "pretrain": {"tokens_per_second": 1e5, "mfu": 0.47, "mfu_datasheet": 0.4, "loss_kernel": "chunked",
                            "profile": {"steps": [13, 14], "step_seconds": 1.42,
                                        "regions_share": {"batch": 0.001, "forward": 0.3, "backward": 0.62, "optimizer": 0.079},
                                        "families_share": {"matmul": 0.7, "attention": 0.2, "other": 0.1}}},
               "pretrain_liger": {"tokens_per_second": 8e4, "mfu": 0.376, "loss_kernel": "liger"},
               "pretrain_fsdp2": {"error": "ChildProcessError: rank 0 failed"},
               "packed_sft": sft, "bf16_vs_fp32": {"skipped": "not started: past the 420 s budget"}}
    lines = bench_gpu.table(results).splitlines()
    assert len(lines) == 8
    assert "0.50 GiB, 10.0 ms" in lines[0] and "RuntimeError: no kernel" in lines[1]
    assert "chunked loss" in lines[2] and "MFU 47.0% of the measured peak, 40.0% of the datasheet peak" in lines[2]
    assert "steps 13-14 went (1.42 s a step)" in lines[3] and "forward 30%, backward 62%, optimizer 8%" in lines[3]
    assert "batch" not in lines[3] and "matmul 70%, attention 20%, other 10%" in lines[3]  # under half a percent: left out
    assert "Liger's fused loss" in lines[4] and "80,000 tok/s" in lines[4]
    assert "rank 0 failed" in lines[5] and "past the 420 s budget" in lines[7]
    assert bench_gpu.headline_ratios(results)["pretrain_liger_vs_chunked_loss"] == pytest.approx(0.8)


def test_a_failing_part_is_recorded_and_the_others_still_run(monkeypatch):
    def broken():
        raise RuntimeError("CUDA error: out of memory")

    ran = []
    monkeypatch.setattr(bench_gpu, "parts", lambda args, device, run_dir: {
        "loss_head": broken, "pretrain": lambda: ran.append("pretrain") or {"tokens_per_second": 1.0, "mfu": 0.5}})
    results = bench_gpu.main(["--smoke"])
    assert results["loss_head"] == {"error": "RuntimeError: CUDA error: out of memory"} and ran == ["pretrain"]
    assert results["pretrain"]["mfu"] == 0.5 and set(results["part_seconds"]) == {"loss_head", "pretrain"}
    skipped = bench_gpu.main(["--smoke", "--budget-seconds", "-1"])  # no part starts past the budget
    assert "skipped" in skipped["loss_head"] and "skipped" in skipped["pretrain"] and ran == ["pretrain"]


def test_an_unknown_part_or_a_bad_row_length_is_refused_before_any_work(capsys):
    for argv in (["--smoke", "--parts", "pretrain,lossHead"], ["--smoke", "--head-tokens", "4K"]):
        with pytest.raises(SystemExit) as stopped:
            bench_gpu.main(argv)
        assert stopped.value.code == 2
    assert "no part named lossHead" in capsys.readouterr().err


@pytest.mark.slow
def test_the_whole_gpu_script_runs_small_on_the_cpu():
    results = bench_gpu.main(["--smoke"])
    assert results["pretrain"]["mfu"] > 0 and results["pretrain_fsdp2"]["tokens_per_second"] > 0
    profile = results["pretrain"]["profile"]  # the two steps after the timed ones, under granite pretrain --profile
    assert profile["steps"] == [7, 8] and results["pretrain"]["steps_timed"] == 3
    assert profile["regions_share"]["backward"] > 0 and profile["families_share"]["matmul"] > 0
    assert results["bf16_vs_fp32"]["max_relative_gap"] < 0.02
    assert results["packed_sft"]["max_logprob_gap_packed_vs_alone"] < 1e-4
    assert results["loss_head"]["1024"]["granite chunked"]["loss_gap"] < 1e-5
    assert tuple(results["part_seconds"]) == bench_gpu.PARTS


def test_a_failed_pretrain_part_keeps_what_granite_said(tmp_path):
    args = argparse.Namespace(preset="tiny-2m", seq_len=64, batch_tokens="256", micro_batch=4, steps=1, peak_tflops=1.0,
                              compile=False, verbose=False)
    with pytest.raises(RuntimeError, match="exited with status 2: .*not a tokenizer directory"):
        bench_gpu.pretrain(tmp_path, args, "broken", "fp32")
