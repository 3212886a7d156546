"""The shared training core: chunked log-probabilities, a pluggable loss, several steps on one batch, a reference model."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import GraniteForCausalLM

from granite_cli.training.distributed import Dist
from granite_cli.training import IGNORE
from granite_cli.training.logprobs import TokenLogprobs, chunked_logprobs
from granite_cli.training.losses import CrossEntropy
from granite_cli.training.schedules import Constant
from granite_cli.training.trainer import Trainer, TrainSettings
from model.presets import build_config


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GraniteForCausalLM(build_config("depth-2", vocab_size=97, bos_id=0, eos_id=0, pad_id=1))


def batch_of(rows=4, length=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 97, (rows, length + 1), generator=generator)
    labels = ids[:, 1:].clone()
    labels[:, :3] = IGNORE  # a prompt that carries no loss
    return {"input_ids": ids[:, :-1], "labels": labels}


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_chunked_logprobs_equal_the_plain_cross_entropy_in_value_and_gradient(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (3, 7))
    labels[0, :2] = IGNORE
    scale = 1 / 8  # Granite divides its logits by logits_scaling

    plain = F.cross_entropy((hidden @ weight.T * scale).flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    plain_grads = torch.autograd.grad(plain, (hidden, weight))
    logprobs, _ = chunked_logprobs(hidden, weight, labels, scale, chunk)
    chunked = -logprobs.sum()
    chunked_grads = torch.autograd.grad(chunked, (hidden, weight))

    assert torch.allclose(chunked, plain, rtol=1e-6)
    for mine, theirs in zip(chunked_grads, plain_grads):
        assert torch.allclose(mine, theirs, atol=1e-6)
    assert (logprobs[labels == IGNORE] == 0).all()
    # asking for the entropy too (rl) changes neither the log-probabilities nor their gradient, by a single bit
    with_entropy, _ = chunked_logprobs(hidden, weight, labels, scale, chunk, entropy=True)
    assert torch.equal(with_entropy, logprobs)
    for mine, alone in zip(torch.autograd.grad(-with_entropy.sum(), (hidden, weight)), chunked_grads):
        assert torch.equal(mine, alone)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_token_logprobs_match_the_models_own_logits_and_entropy(temperature):
    # at temperature T they are those of softmax(logits / T), the distribution rl's rollouts were sampled from
    model = tiny_model()
    batch = batch_of()
    logprobs, entropy = TokenLogprobs(model, chunk_tokens=7, temperature=temperature)(batch["input_ids"], batch["labels"],
                                                                                       entropy=True)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits.float() / temperature  # logits_scaling applied by transformers
    reference = torch.log_softmax(logits, -1).gather(-1, batch["labels"].clamp(min=0)[..., None]).squeeze(-1)
    reference_entropy = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    keep = batch["labels"] != IGNORE
    assert torch.allclose(logprobs[keep], reference[keep], atol=1e-5)
    assert torch.allclose(entropy[keep], reference_entropy[keep], atol=1e-5)


def plain_fused_cross_entropy(input, weight, target, ignore_index, reduction, accum_dtype):
    """Liger's liger_fused_linear_cross_entropy, as far as granite calls it, in plain torch (Liger runs on CUDA only)."""
    assert reduction == "none" and accum_dtype == torch.float32 and input.dtype == weight.dtype
    return F.cross_entropy((input @ weight.T).float(), target, ignore_index=ignore_index, reduction="none")


def test_the_fused_path_gives_the_chunked_log_probabilities_and_gradients():
    """What granite hands the fused kernel (the scaled hidden states, flattened, labels as targets, IGNORE skipped)
    gives the chunked projection's log p and gradients; the kernel itself is checked against it on a GPU
    (tests/test_gpu.py)."""
    from granite_cli.training.logprobs import fused_logprobs

    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (3, 7))
    labels[0, :2] = IGNORE
    chunked, _ = chunked_logprobs(hidden, weight, labels, 1 / 8, 5)
    chunked_grads = torch.autograd.grad(chunked.sum(), (hidden, weight))
    fused = fused_logprobs(plain_fused_cross_entropy, hidden, weight, labels, 1 / 8)
    fused_grads = torch.autograd.grad(fused.sum(), (hidden, weight))
    torch.testing.assert_close(fused, chunked)
    for mine, theirs in zip(fused_grads, chunked_grads):
        torch.testing.assert_close(mine, theirs)
    assert not fused[labels == IGNORE].any()


def test_the_loss_kernel_is_chunked_by_default_and_one_that_cannot_run_is_refused():
    from granite_cli.errors import BadInput
    from granite_cli.training.logprobs import fused_kernel

    cpu = torch.device("cpu")
    assert fused_kernel("chunked", cpu) is None and TokenLogprobs(tiny_model()).fused is None
    with pytest.raises(BadInput, match="liger"):  # not installed here, or not on CUDA: either way said, not ignored
        fused_kernel("liger", cpu)
    with pytest.raises(BadInput, match="one of chunked, liger"):
        fused_kernel("auto", cpu)


def make_trainer(tmp_path, loss=None, reference=None, micro_batch=2, loss_kernel="chunked", loss_chunk_tokens=None):
    model = tiny_model()
    settings = TrainSettings(steps=3, global_batch=4, micro_batch=micro_batch, seq_len=12, schedule=Constant(peak_lr=1e-2),
                             schedule_unit="steps", weight_decay=0.0, loss_kernel=loss_kernel,
                             loss_chunk_tokens=loss_chunk_tokens)
    return Trainer(model, settings, train=None, dist=Dist(0, 1, 0, torch.device("cpu")), workdir=tmp_path,
                   save=lambda *a: None, loss=loss or CrossEntropy(), reference=reference)


def test_accumulation_gives_the_gradient_of_one_big_batch(tmp_path):
    one, two = make_trainer(tmp_path, micro_batch=4), make_trainer(tmp_path, micro_batch=1)
    for trainer in (one, two):  # keep the gradients to compare them
        trainer.optimizer.step, trainer.optimizer.zero_grad = (lambda: None), (lambda **kw: None)
    batch = batch_of()
    first, second = one.step_on(batch), two.step_on(batch)
    assert first["loss"] == pytest.approx(second["loss"], rel=1e-6)
    for a, b in zip(one.model.parameters(), two.model.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


class RowWeighted:
    """A loss of another shape than cross-entropy: per-row weights read from an extra batch key, normalised by rows."""

    wants_entropy = True

    def denominator(self, batch):
        return float(len(batch["input_ids"]))

    def __call__(self, logprobs, entropy, micro):
        per_row = -(logprobs.sum(-1) / (micro["labels"] != IGNORE).sum(-1))
        return (per_row * micro["weight"]).sum(), {"entropy": entropy.sum(-1).mean() * len(per_row)}


def test_a_loss_is_a_component_and_one_batch_takes_several_optimizer_steps(tmp_path):
    trainer = make_trainer(tmp_path, loss=RowWeighted(), reference=copy.deepcopy(tiny_model()))
    batch = {**batch_of(), "weight": torch.tensor([1.0, 0.0, 0.0, 0.0])}
    before = trainer.logprobs(batch)
    losses = [trainer.step_on(batch)["loss"] for _ in range(3)]  # three updates on one (rollout) batch
    after = trainer.logprobs(batch)
    assert trainer.step == 3
    assert losses[2] < losses[0]  # only row 0 carries weight: its likelihood rises
    assert after[0].sum() > before[0].sum()
    # the reference is frozen at the starting weights: its log-probabilities are the policy's before training
    assert torch.allclose(trainer.logprobs(batch, reference=True), before, atol=1e-6)
    assert all(not p.requires_grad for p in trainer.reference.parameters())


def test_a_metric_of_the_loss_is_reported(tmp_path):
    result = make_trainer(tmp_path, loss=RowWeighted()).step_on({**batch_of(), "weight": torch.ones(4)})
    assert result["entropy"] > 0 and result["grad_norm"] > 0


def test_only_labelled_positions_are_projected_and_the_rest_score_zero():
    """Scoring a subset of positions gives the same log-probabilities and gradients as scoring all of them."""
    import torch

    from granite_cli.training import IGNORE

    from granite_cli.training.logprobs import chunked_logprobs

    torch.manual_seed(0)
    hidden = torch.randn(2, 6, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    labels = torch.randint(0, 11, (2, 6))
    masked = labels.clone()
    masked[0, :3] = IGNORE
    masked[1, 4:] = IGNORE
    full, full_entropy = chunked_logprobs(hidden, weight, labels, 0.5, 4, entropy=True)
    some, some_entropy = chunked_logprobs(hidden, weight, masked, 0.5, 4, entropy=True)
    keep = masked != IGNORE
    torch.testing.assert_close(some[keep], full[keep])
    torch.testing.assert_close(some_entropy[keep], full_entropy[keep])
    assert not some[~keep].any() and not some_entropy[~keep].any()
    (some * keep).sum().backward()
    grad_some = hidden.grad.clone()
    hidden.grad = None
    (full * keep).sum().backward()
    torch.testing.assert_close(grad_some, hidden.grad)
    nothing, _ = chunked_logprobs(hidden, weight, torch.full_like(labels, IGNORE), 0.5, 4)
    assert not nothing.any()


def test_fp32_attention_under_bf16_autocast_is_sdpa_in_fp32_and_stays_out_of_the_checkpoint(tmp_path):
    from model.attention import SDPA_FP32, use_fp32_attention

    model = tiny_model()
    ids = batch_of(rows=2, length=16)["input_ids"]
    packed = torch.cat([torch.arange(9), torch.arange(7)]).repeat(2, 1)  # two documents a row
    logits = lambda ids, positions: model(input_ids=ids, position_ids=positions, use_cache=False).logits.float()  # noqa: E731
    with torch.no_grad():
        exact = logits(ids, packed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = logits(ids, packed)
        assert use_fp32_attention(model, "bf16", torch.device("cpu"))
        assert model.config._attn_implementation == SDPA_FP32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = logits(ids, packed)
        second_document_alone = logits(ids[:, 9:], packed[:, 9:])
    assert torch.allclose(mixed, exact, atol=0.1) and not torch.equal(mixed, bf16)  # bf16 elsewhere, fp32 attention
    assert torch.allclose(exact[:, 9:], second_document_alone, atol=1e-5)  # the packed mask still holds
    model.config.save_pretrained(tmp_path)
    assert SDPA_FP32 not in (tmp_path / "config.json").read_text()
    for precision, device in (("fp32", "cpu"), ("bf16", "cuda")):
        assert not use_fp32_attention(tiny_model(), precision, torch.device(device))


def test_a_loss_that_wants_the_entropy_refuses_the_fused_kernel(tmp_path):
    """rl's policy would be scored by the chunked head and its old and reference log-probabilities by the fused one."""
    from granite_cli.errors import BadInput

    with pytest.raises(BadInput, match="wants each position's entropy"):
        make_trainer(tmp_path, loss=RowWeighted(), loss_kernel="liger")


def test_the_loss_chunk_size_bounds_the_positions_projected_at_once_and_keeps_the_loss(tmp_path, monkeypatch):
    from granite_cli.training import logprobs

    sizes, project = [], logprobs._project
    monkeypatch.setattr(logprobs, "_project", lambda hidden, *rest: sizes.append(len(hidden)) or project(hidden, *rest))
    whole = make_trainer(tmp_path).step_on(batch_of())["loss"]
    assert max(sizes) == 2 * 9  # by default a micro-batch of 2 rows x 9 labelled positions is one chunk
    sizes.clear()
    chunked = make_trainer(tmp_path, loss_chunk_tokens=5).step_on(batch_of())["loss"]
    assert max(sizes) == 5 and chunked == pytest.approx(whole, rel=1e-6)


def test_a_resume_with_no_step_checkpoint_starts_over_without_the_killed_runs_metric_lines(tmp_path):
    trainer = make_trainer(tmp_path)
    killed = [{"step": 1, "loss": 7.7}, {"step": 2, "loss": 7.5}]  # logged before the kill, no checkpoint yet
    trainer.metrics_path.write_text("".join(json.dumps(line) + "\n" for line in killed))
    assert trainer.resume() is False and trainer.step == 0
    assert trainer.metrics_path.read_text() == ""  # the run starting over logs its own steps 1, 2, ... once
