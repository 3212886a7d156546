"""Checks that need an NVIDIA GPU and liger-kernel (skipped elsewhere; run on one with `pytest tests/test_gpu.py`):
Liger's fused linear + cross-entropy, as the trainer calls it, against granite's chunked projection."""

import json
import shutil

import pytest
import torch

from conftest import granite
from test_tokenize import sample_documents, write_jsonl
from granite_cli.training import IGNORE
from granite_cli.training.logprobs import chunked_logprobs, fused_kernel, fused_logprobs

liger = pytest.importorskip("liger_kernel", reason="liger-kernel is not installed (pip install 'granite-recipe[gpu]')")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_liger_gives_the_chunked_log_probabilities_and_gradients(dtype):
    cuda = torch.device("cuda")
    function = fused_kernel("liger", cuda)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 1024, 256, generator=generator).to(cuda).requires_grad_()
    weight = (torch.randn(5000, 256, generator=generator) * 0.05).to(cuda).requires_grad_()
    labels = torch.randint(0, 5000, (2, 1024), generator=generator).to(cuda)
    labels[0, :100] = IGNORE
    results = []
    for score in (lambda: chunked_logprobs(hidden, weight, labels, 1 / 8, 300)[0],
                  lambda: fused_logprobs(function, hidden, weight, labels, 1 / 8)):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            logprobs = score()
        results.append((logprobs.detach(), *torch.autograd.grad(logprobs.sum(), (hidden, weight))))
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-3, "atol": 1e-3}
    for chunked, fused in zip(*results):
        torch.testing.assert_close(fused, chunked, **tolerance)
    assert not results[1][0][labels == IGNORE].any()


def test_pretrain_with_liger_follows_the_chunked_loss_curve(tmp_path, tokenizer_dir):
    """The trainer's path: the same bf16 steps with either loss kernel give the same losses (within bf16)."""
    run = tmp_path / "run"
    shutil.copytree(tokenizer_dir, run / "tokenizer")
    granite("tokenize", write_jsonl(tmp_path / "train.jsonl", sample_documents(per_source=12, seed=1)), "--run-dir", run,
            "--phase", "1", check=True)
    losses = {}
    for kernel in ("chunked", "liger"):
        out = run / "checkpoints" / kernel
        granite("pretrain", "--run-dir", run, "-o", out, "--preset", "depth-2", "--seq-len", "256", "--batch-tokens",
                "4096", "--micro-batch", "8", "--steps", "8", "--precision", "bf16", "--log-every", "1", "--seed", "0",
                "--loss-kernel", kernel, "--device", "cuda", check=True)
        losses[kernel] = [m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
    assert len(losses["liger"]) == len(losses["chunked"]) == 8
    assert losses["liger"][-1] < losses["liger"][0] - 0.5  # it trains
    for fused, chunked in zip(losses["liger"], losses["chunked"]):
        assert fused == pytest.approx(chunked, rel=2e-2)
