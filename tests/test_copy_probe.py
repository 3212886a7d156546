"""examples/copy_probe.py: the copy probe tells a model that copies its context from one that cannot."""

import importlib.util
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import torch

from conftest import REPO

spec = importlib.util.spec_from_file_location("copy_probe", REPO / "examples" / "copy_probe.py")
copy_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(copy_probe)

VOCAB, SPAN = 500, 32


class FakeLM(torch.nn.Module):
    """What TokenLogprobs reads of a causal LM: a backbone's last hidden state and the output projection (here the
    identity times 50 over a VOCAB-wide hidden state: the hidden state of a position is its next-token logits)."""

    def __init__(self, copies: bool):
        super().__init__()
        self.copies = copies
        self.config = SimpleNamespace(vocab_size=VOCAB)
        self.lm_head = torch.nn.Linear(VOCAB, VOCAB, bias=False)
        self.lm_head.weight.data = 50.0 * torch.eye(VOCAB)

    def model(self, input_ids, **_):
        """A copier predicts each token of the second showing from the first (SPAN places back); else uniform."""
        hidden = torch.zeros(*input_ids.shape, VOCAB)
        if self.copies:
            for t in range(SPAN - 1, input_ids.shape[1]):
                hidden[torch.arange(input_ids.shape[0]), t, input_ids[:, t + 1 - SPAN]] = 1.0
        return SimpleNamespace(last_hidden_state=hidden)


def test_a_copier_pays_only_the_first_showing():
    first, repeat = copy_probe.copy_losses(FakeLM(copies=True), span=SPAN)
    assert abs(first - math.log(VOCAB)) < 1e-4
    assert repeat < 1e-6


def test_a_model_that_cannot_copy_pays_twice():
    first, repeat = copy_probe.copy_losses(FakeLM(copies=False), span=SPAN)
    assert abs(first - math.log(VOCAB)) < 1e-4 and abs(repeat - math.log(VOCAB)) < 1e-4


def test_not_a_checkpoint_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "examples" / "copy_probe.py"), str(tmp_path)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2
    assert done.stderr.strip() == f"copy_probe: {tmp_path}: not a model checkpoint (no config.json)"
