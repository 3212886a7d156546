"""granite rl: the policy loss against hand-computed values, advantages, rewards that never stop a run, packing,
bad prompts, learning on a task a tiny model can learn, and exact resume after SIGKILL."""

import json
import math
import time

import numpy as np
import pytest
import torch

from conftest import REPO, granite, kill_after_first_checkpoint
from granite_cli.data.records import read_records
from granite_cli.training import IGNORE
from granite_cli.training.logprobs import TokenLogprobs
from granite_cli.verify import verify
from stages.rl.advantages import group_advantages, overlong_penalty
from stages.rl.objective import PolicyLoss
from stages.rl.rewards import Rewarder
from stages.rl.rollouts import Rollouts, RolloutSettings, Sequence, trained_only

LN2 = math.log(2)


def toy_batch(weights):
    """One row, two completions: A trains positions 0-1 (advantage +1), B position 2 (advantage -1).

    ratios: 1.5 (clipped high: 1.28), 0.5 (unclipped), 0.5 with a negative advantage (clipped low: 0.8);
    the reference is twice as likely as the policy on B's token: k3 KL = 2 - ln 2 - 1."""
    logprobs = torch.tensor([[-1.0, -1.0, -1.0, 0.0]])
    micro = {
        "labels": torch.tensor([[5, 6, 7, IGNORE]]),
        "old_logprobs": logprobs - torch.tensor([[math.log(1.5), math.log(0.5), math.log(0.5), 0.0]]),
        "ref_logprobs": logprobs + torch.tensor([[0.0, 0.0, LN2, 0.0]]),
        "advantages": torch.tensor([[1.0, 1.0, -1.0, 0.0]]),
        "loss_mask": torch.tensor([[1.0, 1.0, 1.0, 0.0]]),
        "token_weight": torch.tensor([weights + [0.0]]),
        "sequences": torch.tensor([2.0]), "trained_sequences": torch.tensor([2.0]),
    }
    return logprobs, torch.zeros_like(logprobs), micro


PER_TOKEN = [-1.28, -0.5, 0.8 + 0.1 * (2 - LN2 - 1)]


@pytest.mark.parametrize("normalisation, weights, expected", [
    ("dapo", [1.0, 1.0, 1.0], sum(PER_TOKEN) / 3),                                   # over the batch's 3 tokens
    ("grpo", [0.5, 0.5, 1.0], ((PER_TOKEN[0] + PER_TOKEN[1]) / 2 + PER_TOKEN[2]) / 2),  # per sequence, then over 2
    ("dr_grpo", [1.0, 1.0, 1.0], sum(PER_TOKEN) / (2 * 4)),                          # 2 sequences x 4 max new tokens
])
def test_policy_loss_matches_the_hand_computed_value(normalisation, weights, expected):
    loss = PolicyLoss(normalisation, 0.2, 0.28, beta=0.1, max_new_tokens=4)
    logprobs, entropy, micro = toy_batch(weights)
    denominator = loss.denominator(micro)
    total, metrics = loss(logprobs, entropy, micro)
    assert float(total) / denominator == pytest.approx(expected, abs=1e-6)
    assert float(metrics["clip_high"]) / denominator == pytest.approx(1 / 3)  # metrics are token means whatever the normaliser
    assert float(metrics["clip_low"]) / denominator == pytest.approx(1 / 3)
    assert float(metrics["kl"]) / denominator == pytest.approx((2 - LN2 - 1) / 3)


def test_policy_gradient_pushes_up_good_tokens_and_down_bad_ones():
    loss = PolicyLoss("dapo", 0.2, 0.28, beta=0.0)
    logprobs = torch.tensor([[-2.0, -2.0]], requires_grad=True)
    micro = {"old_logprobs": torch.tensor([[-2.0, -2.0]]), "advantages": torch.tensor([[1.0, -1.0]]),
             "loss_mask": torch.ones(1, 2), "token_weight": torch.ones(1, 2)}
    total, _ = loss(logprobs, torch.zeros(1, 2), micro)
    total.backward()
    assert logprobs.grad[0, 0] < 0 < logprobs.grad[0, 1]  # descending the loss raises the good token, lowers the bad


def test_one_update_per_batch_needs_no_old_policy_pass():
    """Without old log-probabilities the loss takes the current ones: the same value and gradient as a ratio of 1."""
    loss = PolicyLoss("dapo", 0.2, 0.28, beta=0.0)
    results = []
    for with_old in (True, False):
        logprobs = torch.tensor([[-2.0, -1.0, -3.0]], requires_grad=True)
        micro = {"advantages": torch.tensor([[1.0, -0.5, 2.0]]), "loss_mask": torch.ones(1, 3), "token_weight": torch.ones(1, 3)}
        if with_old:
            micro["old_logprobs"] = logprobs.detach().clone()
        total, _ = loss(logprobs, torch.zeros(1, 3), micro)
        total.backward()
        results.append((float(total.detach()), logprobs.grad.clone()))
    assert results[0][0] == results[1][0] and torch.equal(results[0][1], results[1][1])


def test_group_advantages_and_overlong_penalty():
    advantages, zero = group_advantages(np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    unbiased_std = math.sqrt(1 / 3)
    assert advantages[0] == pytest.approx([0.5 / unbiased_std, -0.5 / unbiased_std] * 1 + [-0.5 / unbiased_std, 0.5 / unbiased_std], rel=1e-5)
    assert list(zero) == [False, True] and not advantages[1].any()
    centred, _ = group_advantages(np.array([[1.0, 0.0, 0.0, 1.0]]), scale=False)
    assert list(centred[0]) == [0.5, -0.5, -0.5, 0.5]
    assert [overlong_penalty(n, 100, 20) for n in (80, 90, 100, 120)] == [0.0, -0.5, -1.0, -1.0]
    assert overlong_penalty(100, 100, 0) == 0.0


def test_a_failing_or_hanging_verifier_gives_zero_and_is_counted(monkeypatch):
    from granite_cli import verify as registry

    def broken(response, verifier):
        raise RuntimeError("checker bug")

    def hangs(response, verifier):
        time.sleep(3)

    monkeypatch.setitem(registry.VERIFIERS, "broken", broken)
    monkeypatch.setitem(registry.VERIFIERS, "hangs", hangs)
    rewards, failures = Rewarder(workers=3, timeout=0.5).check(
        ["42", "x", "y"], [{"type": "numeric", "answer": 42}, {"type": "broken"}, {"type": "hangs"}])
    assert rewards == [1.0, 0.0, 0.0]
    assert failures == {"broken: RuntimeError": 1, "hangs: timeout": 1}


def bundled_prompts():
    return list(read_records([str(REPO / "examples" / "data" / "rl" / "multi-domain.jsonl.zst")]))


def gold_answer(verifier):
    kind = verifier["type"]
    if kind in ("numeric", "exact"):
        return f"The answer is {verifier['answer']}."
    if kind == "sql":
        return f"```sql\n{verifier['gold']}\n```"
    if kind == "json_schema":
        return json.dumps(verifier["expected"])
    return None


def test_every_stage1_domain_verifier_accepts_the_gold_answer_and_rejects_a_wrong_one():
    seen = {}
    for prompt in bundled_prompts():
        gold = gold_answer(prompt["verifier"])
        if gold is None or prompt["domain"] in seen:
            continue
        seen[prompt["domain"]] = True
        assert verify(gold, prompt["verifier"]).score == 1.0, prompt
        assert verify("I do not know.", prompt["verifier"]).score == 0.0, prompt
    # the nine domains minus instruction following (constraints, tested in test_verifiers) and chat (a reward model)
    assert set(seen) == {"math", "science", "logic", "structured_output", "text_to_sql", "temporal", "in_context_learning"}


def packing_rollouts(normalisation="dapo"):
    settings = RolloutSettings(samples_per_prompt=2, prompts_per_step=1, max_new_tokens=4, temperature=1.0, top_p=1.0,
                               updates_per_batch=1, pack_len=12, rows_multiple=1, seed=0, normalisation=normalisation)
    return Rollouts([], settings, Rewarder(), eos_id=0, pad_id=1)


def test_packing_trains_only_completion_tokens_and_restarts_positions():
    rollouts = packing_rollouts()
    sequences = [Sequence(np.array([10, 11, 12, 20, 21]), 3, 0.5, True),   # prompt 10 11 12, completion 20 21
                 Sequence(np.array([13, 14, 22, 23, 24]), 2, -1.0, True),   # prompt 13 14, completion 22 23 24
                 Sequence(np.array([15, 16, 25]), 2, 2.0, False)]           # masked out (e.g. truncated)
    batch, spans = rollouts.pack(sequences)
    assert batch["input_ids"].shape[0] == 2  # 13 tokens: two rows of at most 12, no padding rows
    for (row, first, last), sequence in zip(spans, sequences):
        completion = sequence.ids[sequence.prompt_len:]
        assert batch["labels"][row, first:last].tolist() == completion.tolist()
        assert batch["position_ids"][row, first + 1 - sequence.prompt_len] == 0  # each sequence starts at position 0
        assert set(batch["advantages"][row, first:last].tolist()) == {sequence.advantage}
        assert set(batch["loss_mask"][row, first:last].tolist()) == {float(sequence.trained)}
    assert int((batch["labels"] != IGNORE).sum()) == 2 + 3 + 1
    assert float(batch["sequences"].sum()) == 3


def test_a_packed_row_scores_each_sequence_as_if_alone(checkpoint):
    from model.checkpoint import load_model

    model = TokenLogprobs(load_model(checkpoint, dtype=torch.float32)).eval()
    rollouts = packing_rollouts()
    sequences = [Sequence(np.array([10, 11, 12, 20, 21]), 3, 1.0, True), Sequence(np.array([13, 14, 22, 23, 24]), 2, 1.0, True)]
    batch, spans = rollouts.pack(sequences)
    with torch.no_grad():
        packed, _ = model(batch["input_ids"], batch["labels"], batch["position_ids"])
        for (row, first, last), sequence in zip(spans, sequences):
            ids = torch.tensor([sequence.ids.tolist()])
            labels = torch.full_like(ids, IGNORE)
            labels[0, sequence.prompt_len - 1:-1] = ids[0, sequence.prompt_len:]
            alone, _ = model(ids, labels)
            torch.testing.assert_close(packed[row, first:last], alone[0, sequence.prompt_len - 1:-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("normalisation", ["dapo", "grpo", "dr_grpo"])
def test_completions_out_of_the_loss_are_out_of_the_batch_and_the_loss_is_the_same(checkpoint, normalisation):
    """A completion the loss does not train (a zero-variance group, a truncated answer) is not packed or scored: the
    loss and its gradient are those of the batch that packs it masked, under every normalisation (dr_grpo counts
    it in its denominator)."""
    from model.checkpoint import load_model

    model = TokenLogprobs(load_model(checkpoint, dtype=torch.float32))
    rollouts = packing_rollouts(normalisation)
    rollouts.s.reference = False  # beta 0: no KL term, no reference to score with
    loss = PolicyLoss(normalisation, 0.2, 0.28, beta=0.0, max_new_tokens=4)
    sequences = [Sequence(np.array([10, 11, 12, 20, 21]), 3, 0.5, True), Sequence(np.array([15, 16, 25, 26]), 2, 2.0, False),
                 Sequence(np.array([13, 14, 22, 23, 24]), 2, -1.0, True)]

    def loss_and_gradient(minibatch):
        rollouts.score_old_and_reference([minibatch])
        batch = minibatch[0]
        model.zero_grad()
        logprobs, entropy = model(batch["input_ids"], batch["labels"], batch["position_ids"], entropy=True)
        value = loss(logprobs, entropy, batch)[0] / loss.denominator(batch)
        value.backward()
        return value.detach(), [p.grad.clone() for p in model.parameters()]

    masked_loss, masked_gradient = loss_and_gradient(rollouts.pack(sequences))
    kept, left_out = trained_only(sequences)
    assert [s.trained for s in kept] == [True, True] and left_out == 1
    batch, _ = lean = rollouts.pack(kept, left_out)
    assert not {25, 26} & set(batch["input_ids"].flatten().tolist()) and float(batch["sequences"].sum()) == 3
    lean_loss, lean_gradient = loss_and_gradient(lean)
    torch.testing.assert_close(lean_loss, masked_loss)
    for lean_part, masked_part in zip(lean_gradient, masked_gradient):
        torch.testing.assert_close(lean_part, masked_part, atol=1e-6, rtol=1e-5)
    untrained = [Sequence(s.ids, s.prompt_len, s.advantage, False) for s in sequences]
    assert trained_only(untrained) == (untrained[:1], 2)  # nothing trains: one is kept, and the step's loss is zero


# ------------------------------------------------------------------ the command
def write_prompts(path, n=48, extra=()):
    """Prompts a tiny model can learn: the reward is whether the answer is all lowercase (about half of a random
    model's short answers are)."""
    rows = [{"id": f"p{i}", "domain": ("greeting", "farewell")[i % 2], "messages": [{"role": "user", "content": f"Say hi {i}"}],
             "verifier": {"type": "constraints", "constraints": [{"type": "lowercase"}]}} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, *extra]))
    return path


FAST = ["-G", "8", "--prompts-per-step", "4", "--max-new-tokens", "6", "--max-context", "64", "--micro-batch", "8",
        "--peak-tflops", "1", "--heldout-fraction", "0.25", "--lr", "1e-2"]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def rl_run(checkpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rl")
    chat = {"id": "chat-1", "domain": "general_chat", "messages": [{"role": "user", "content": "Write a poem."}],
            "verifier": {"type": "reward_model"}}
    prompts = write_prompts(tmp / "prompts.jsonl", extra=[chat])
    out = tmp / "rl"
    granite("rl", prompts, "--init-from", checkpoint, "-o", out, "--run-dir", tmp / "run", "--steps", "10", *FAST, check=True)
    return out, prompts


def test_rl_raises_the_reward_and_logs_every_step(rl_run):
    out, _ = rl_run
    lines = metrics(out)
    assert [m["step"] for m in lines] == list(range(1, 11))
    rewards = [m["reward"] for m in lines]
    # steps 1-2 sample (nearly) the starting policy; at LR 1e-2 step 3 may already have learned
    assert np.mean(rewards[-3:]) > np.mean(rewards[:2]) + 0.2, rewards
    for key in ("reward_std", "reward/greeting", "zero_variance_share", "length_mean", "length_max", "truncated_share",
                "clip_low", "clip_high", "kl", "entropy", "generation_tokens_per_second", "training_tokens_per_second",
                "seconds_generation", "seconds_reward", "seconds_scoring", "seconds_update"):
        assert key in lines[-1], key
    entry = json.loads((out / "lineage.json").read_text())[-1]
    assert entry["stage"] == "rl" and entry["arguments"]["stage"] == 1
    assert entry["arguments"]["prompts"]["left_out_needs_reward_model"] == 1  # chat waits for the reward model
    table = entry["metrics"]["heldout_reward"]
    assert table["all"]["n"] == len((out / "heldout.jsonl").read_text().splitlines()) > 0
    assert table["all"]["ci_low"] <= table["all"]["change"] <= table["all"]["ci_high"]


def test_a_prompt_with_an_unknown_verifier_stops_before_training(checkpoint, tmp_path):
    bad = {"id": "bad", "messages": [{"role": "user", "content": "?"}], "verifier": {"type": "telepathy"}}
    prompts = write_prompts(tmp_path / "prompts.jsonl", n=2, extra=[bad])
    out = tmp_path / "rl"
    result = granite("rl", prompts, "--init-from", checkpoint, "-o", out, "--run-dir", tmp_path / "run", *FAST)
    assert result.returncode == 2
    assert f"{prompts}:3: unknown verifier type 'telepathy'" in result.stderr.decode()
    assert not out.exists() and not (tmp_path / ".rl.partial").exists()
    skipped = granite("rl", prompts, "--init-from", checkpoint, "-o", out, "--run-dir", tmp_path / "run", *FAST,
                      "--steps", "1", "--on-error", "skip", "--heldout-fraction", "0")
    assert skipped.returncode == 0 and "skipped 1 bad record(s): 1 bad RL prompt" in skipped.stderr.decode()


def test_killed_and_resumed_rl_matches_an_uninterrupted_one(rl_run, checkpoint, tmp_path):
    from safetensors.torch import load_file

    _, prompts = rl_run
    args = [prompts, "--init-from", checkpoint, "--run-dir", tmp_path / "run", *FAST, "--steps", "4",
            "--updates-per-batch", "2", "--checkpoint-every", "1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    granite("rl", *args, "-o", straight, check=True)
    kill_after_first_checkpoint(["rl", *args, "-o", resumed], tmp_path / ".resumed.partial" / "checkpoints")
    granite("rl", *args, "-o", resumed, "--resume", check=True)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timing = ("tokens_per_second", "mfu", "generation_tokens_per_second", "training_tokens_per_second")
    curve = lambda path: [{k: v for k, v in m.items() if k not in timing and not k.startswith("seconds_")} for m in metrics(path)]
    assert curve(straight) == curve(resumed)
    assert any(m["clip_low"] or m["clip_high"] for m in metrics(straight)) or metrics(straight)[-1]["ratio"] != 1.0


def test_dynamic_sampling_fills_the_batch_with_groups_that_vary_and_top_entropy_trains_a_share(rl_run, checkpoint, tmp_path):
    _, prompts = rl_run
    out = tmp_path / "dynamic"
    granite("rl", prompts, "--init-from", checkpoint, "-o", out, "--run-dir", tmp_path / "run", *FAST, "--steps", "2",
            "--heldout-fraction", "0", "--dynamic-sampling", "--max-draws", "4", "--top-entropy", "0.5", check=True)
    for line in metrics(out):
        assert line["zero_variance_share"] == 0.0 and line["groups"] == 4  # every kept group teaches something
        assert line["prompts_drawn"] >= 4
        completion_tokens = line["length_mean"] * 8 * 4 + 8 * 4 * (1 - line["truncated_share"])  # + each ended answer's EOS
        assert 0.4 * completion_tokens <= line["trained_tokens_in_batch"] <= 0.6 * completion_tokens
