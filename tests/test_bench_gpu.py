"""benchmarks/bench_gpu.py is tested where there is no GPU: its packed-row check and its table in-process, the
whole script with --smoke (every part small on the CPU) in the slow suite."""

from __future__ import annotations

import argparse
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO))
from benchmarks import bench_gpu  # noqa: E402


def test_packed_rows_score_each_conversation_as_alone_and_the_table_reads():
    args = argparse.Namespace(preset="tiny-2m", vocab=512, seq_len=64, compile=False, micro_batch=2, sft_steps=3)
    sft = bench_gpu.packed_sft(args, torch.device("cpu"))
    assert sft["conversations_in_first_row"] > 1 and sft["max_logprob_gap_packed_vs_alone"] < 1e-4
    assert sft["trained_tokens_per_second"] > 0
    gap = bench_gpu.loss_gap([{"loss": 2.02}, {"loss": 1.5}], [{"loss": 2.0}, {"loss": 1.5}])
    assert gap["max_relative_gap"] == pytest.approx(0.01)
    results = {"pretrain": {"tokens_per_second": 1e5, "mfu": 0.47}, "pretrain_fsdp2": {"tokens_per_second": 9e4, "mfu": 0.42},
               "packed_sft": sft, "bf16_vs_fp32": gap}
    text = bench_gpu.table(results)
    assert "MFU 47.0%" in text and "max gap 1.00%" in text and len(text.splitlines()) == 4


@pytest.mark.slow
def test_the_whole_gpu_script_runs_small_on_the_cpu():
    results = bench_gpu.main(["--smoke"])
    assert results["pretrain"]["mfu"] > 0 and results["pretrain_fsdp2"]["tokens_per_second"] > 0
    assert results["bf16_vs_fp32"]["max_relative_gap"] < 0.02
    assert results["packed_sft"]["max_logprob_gap_packed_vs_alone"] < 1e-4
