"""examples/copy_probe.py: the copy probe tells a model that copies its context from one that cannot."""

import importlib.util
import math
from types import SimpleNamespace

import torch

from conftest import REPO

spec = importlib.util.spec_from_file_location("copy_probe", REPO / "examples" / "copy_probe.py")
copy_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(copy_probe)

VOCAB, SPAN = 500, 32


class Copier:
    """Predicts each token of the second showing from the first (the token SPAN places back); uniform before."""

    def __call__(self, ids):
        logits = torch.zeros(*ids.shape, VOCAB)
        for t in range(SPAN - 1, ids.shape[1] - 1):
            logits[torch.arange(ids.shape[0]), t, ids[:, t + 1 - SPAN]] = 50.0
        return SimpleNamespace(logits=logits)


class Uniform:
    def __call__(self, ids):
        return SimpleNamespace(logits=torch.zeros(*ids.shape, VOCAB))


def test_a_copier_pays_only_the_first_showing():
    first, repeat = copy_probe.copy_losses(Copier(), VOCAB, span=SPAN)
    assert abs(first - math.log(VOCAB)) < 1e-4
    assert repeat < 1e-6


def test_a_model_that_cannot_copy_pays_twice():
    first, repeat = copy_probe.copy_losses(Uniform(), VOCAB, span=SPAN)
    assert abs(first - math.log(VOCAB)) < 1e-4 and abs(repeat - math.log(VOCAB)) < 1e-4
