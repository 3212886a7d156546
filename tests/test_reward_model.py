"""The reward model and the stages it scores: Bradley-Terry by hand, packing changes no score, plain transformers
reads the checkpoint with the same scores, `granite rl reward-model` learns pairs it can tell apart, stage 2
needs a reward model and chat prompts are scored by it, and the regression table flags a fall past tolerance."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import granite
from granite_cli.training import IGNORE
from stages.rl.reward_model import CHOSEN, REJECTED, BradleyTerry, Pair, pack

GOOD, BAD = "I am Granite, a language model built by IBM.", "I am ChatGPT, made by OpenAI."


def test_bradley_terry_loss_and_accuracy_by_hand():
    scores = torch.tensor([[0.0, 2.0, 0.0, 0.5, -1.0, 0.0]])
    labels = torch.tensor([[IGNORE, CHOSEN, IGNORE, REJECTED, CHOSEN, REJECTED]])
    loss = BradleyTerry()
    assert loss.denominator({"labels": labels}) == 2
    value, metrics = loss(scores, None, {"labels": labels})
    # margins 2 - 0.5 = 1.5 (right) and -1 - 0 = -1 (wrong)
    assert value.item() == pytest.approx(math.log1p(math.exp(-1.5)) + math.log1p(math.exp(1.0)))
    assert metrics["accuracy"].item() == 1.0 and metrics["margin"].item() == pytest.approx(0.5)


def write_pairs(path, n=60):
    """Identity pairs a model can learn to tell apart: the same prompt, a right and a wrong self-description."""
    rows = [{"id": f"pair-{i}", "messages": [{"role": "user", "content": f"Question {i}: who are you?"}],
             "chosen": {"role": "assistant", "content": GOOD}, "rejected": BAD} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


RM_FLAGS = ["--lr", "1e-3", "--epochs", "3", "--pairs-per-step", "8", "--seq-len", "128", "--heldout-fraction", "0.25",
            "--peak-tflops", "1", "--micro-batch", "8"]


@pytest.fixture(scope="module")
def reward_model(checkpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rm")
    pairs = write_pairs(tmp / "pairs.jsonl")
    out = tmp / "run" / "checkpoints" / "reward-model"
    granite("rl", "reward-model", pairs, "--init-from", checkpoint, "--run-dir", tmp / "run", *RM_FLAGS, check=True)
    return out


def test_reward_model_learns_the_pairs_and_reports_held_out_accuracy(reward_model):
    entry = json.loads((reward_model / "lineage.json").read_text())[-1]
    assert entry["stage"] == "reward-model"
    accuracy = entry["metrics"]["heldout_accuracy"]
    assert accuracy["n"] > 5 and accuracy["accuracy"] == 1.0, accuracy
    assert accuracy["ci_low"] <= accuracy["accuracy"] <= accuracy["ci_high"]
    assert json.loads((reward_model / "reward_model.json").read_text())["offset"] == entry["metrics"]["offset"]


def test_two_processes_under_fsdp_train_the_reward_model_one_process_trains(reward_model, checkpoint, tmp_path):
    # the cluster recipe trains the reward model with torchrun and FSDP2 (examples/slurm/reward-model.sbatch)
    from safetensors.torch import load_file

    out = tmp_path / "rm-fsdp"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29511",
                             "-m", "granite_cli", "rl", "reward-model", str(write_pairs(tmp_path / "pairs.jsonl")),
                             "--init-from", str(checkpoint), "--run-dir", str(tmp_path / "run"), "-o", str(out),
                             "--parallel", "fsdp", *RM_FLAGS], capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    one, two = load_file(str(reward_model / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], atol=2e-5, rtol=1e-4), name
    accuracy = lambda path: json.loads((path / "lineage.json").read_text())[-1]["metrics"]["heldout_accuracy"]["accuracy"]
    assert accuracy(out) == accuracy(reward_model)


def test_plain_transformers_reads_the_reward_model_with_the_same_scores(reward_model):
    from transformers import AutoTokenizer, GranitePreTrainedModel
    from transformers.modeling_layers import GenericForSequenceClassification

    from model.reward_model import RewardScorer

    class GraniteForSequenceClassification(GenericForSequenceClassification, GranitePreTrainedModel):
        pass

    plain = GraniteForSequenceClassification.from_pretrained(str(reward_model)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(reward_model))
    prompt = [{"role": "user", "content": "Who are you?"}]
    ours = RewardScorer(reward_model, torch.device("cpu")).scores([prompt, prompt], [GOOD, "I do not know"])
    for answer, score in zip([GOOD, "I do not know"], ours):
        text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False).rstrip("\n")
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            assert plain(input_ids=ids).logits[0, 0].item() == pytest.approx(score, abs=1e-4)
    assert ours[0] > ours[1]


def test_pairs_packed_in_one_row_score_as_if_alone(checkpoint):
    from model.reward_model import RewardScores, from_causal_lm

    torch.manual_seed(0)
    scorer = RewardScores(from_causal_lm(checkpoint)).eval()
    pairs = [Pair("a", [], "", "", [5, 6, 7, 8], [5, 6, 9]), Pair("b", [], "", "", [10, 11], [10, 12, 13, 14, 15])]

    def margins(batch):
        with torch.no_grad():
            scores, _ = scorer(batch["input_ids"], batch["labels"], batch["position_ids"])
        return scores[batch["labels"] == CHOSEN] - scores[batch["labels"] == REJECTED]

    together = pack(pairs, 32, pad_id=1)
    assert len(together["input_ids"]) == 1
    alone = torch.cat([margins(pack([p], 32, pad_id=1)) for p in pairs])
    assert torch.allclose(margins(together), alone, atol=1e-5)


def test_rlhf_stage_needs_a_reward_model(checkpoint, tmp_path):
    result = granite("rl", "--stage", "2", "--init-from", checkpoint, "--run-dir", tmp_path / "run")
    assert result.returncode == 2
    assert "scored by a reward model" in result.stderr.decode() and "granite rl reward-model" in result.stderr.decode()


def test_chat_prompts_are_scored_by_the_reward_model(reward_model, checkpoint, tmp_path):
    rows = [{"id": f"c{i}", "domain": "general_chat", "messages": [{"role": "user", "content": f"Who are you, {i}?"}],
             "verifier": {"type": "reward_model"}} for i in range(16)]
    rows += [{"id": f"l{i}", "domain": "lowercase", "messages": [{"role": "user", "content": f"Say hi {i}"}],
              "verifier": {"type": "constraints", "constraints": [{"type": "lowercase"}]}} for i in range(8)]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rl"
    granite("rl", prompts, "--init-from", checkpoint, "--reward-model", reward_model, "-o", out, "--run-dir", tmp_path / "run",
            "--steps", "2", "-G", "4", "--prompts-per-step", "4", "--max-new-tokens", "6", "--max-context", "64",
            "--heldout-fraction", "0.3", "--peak-tflops", "1", check=True)
    entry = json.loads((out / "lineage.json").read_text())[-1]
    assert "left_out_needs_reward_model" not in entry["arguments"]["prompts"]
    table = entry["metrics"]["regression"]
    assert [c["name"] for c in table["columns"]] == [checkpoint.name, "rl"]
    assert "general_chat" in table["columns"][-1]["domains"]
    rewards = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    chat = [r["reward_after"] for r in rewards if r["domain"] == "general_chat"]
    assert chat and all(0 < r < 1 for r in chat)  # sigmoid(score - offset): never exactly a verifier's 0 or 1


def test_a_domain_falling_past_tolerance_is_a_regression_when_the_fall_is_beyond_noise():
    from stages.rl.regression import regressions

    # columns with means only (a lineage from before per-prompt rewards were kept): the mean decides
    table = [{"name": "sft", "domains": {"math": {"n": 10, "mean": 0.50}, "chat": {"n": 10, "mean": 0.20}}},
             {"name": "rl-stage-1", "domains": {"math": {"n": 10, "mean": 0.60}, "chat": {"n": 10, "mean": 0.25}}},
             {"name": "rl-stage-2", "domains": {"math": {"n": 10, "mean": 0.52}, "chat": {"n": 10, "mean": 0.60}}}]
    found = regressions(table, tolerance=0.05)
    assert [(f["domain"], f["best_at"], round(f["fall"], 3), f["beyond_noise"]) for f in found] == [("math", "rl-stage-1", 0.08, True)]
    assert regressions(table, tolerance=0.1) == []

    def column(name, rewards):
        return {"name": name, "domains": {"d": {"n": len(rewards), "mean": sum(rewards) / len(rewards), "rewards": rewards}}}

    # every prompt lost 0.1 (against the best column, not the last): a regression, its interval below zero
    [fall] = regressions([column("a", [0.5] * 8), column("b", [0.4] * 8), column("c", [0.4] * 8)], tolerance=0.05)
    assert fall["best_at"] == "a" and fall["beyond_noise"] and fall["ci_high"] < 0
    # one prompt of eight lost its 1: the mean falls 0.125, past the tolerance, but leaving that prompt out of a
    # resample (a third of them) leaves no fall: noise, reported as such
    [fall] = regressions([column("a", [1.0] + [0.0] * 7), column("b", [0.0] * 8)], tolerance=0.05)
    assert fall["fall"] == 0.125 and not fall["beyond_noise"] and fall["ci_high"] == 0


def test_a_parent_that_answered_again_gets_its_own_column(tmp_path):
    """A stage whose "before" is the parent answering again (another seed) measures its change from those answers:
    the table shows them as a column, so the change sits beside the mean it is from."""
    from stages.rl.heldout import compare
    from stages.rl.regression import columns

    parent = tmp_path / "rl-stage-3"
    parent.mkdir()
    carried = [{"name": "rl-stage-3", "domains": {"all": {"n": 2, "mean": 0.25}, "math": {"n": 2, "mean": 0.25}}}]
    (parent / "lineage.json").write_text(json.dumps([{"stage": "rl", "metrics": {"regression": {"suite": "k", "columns": carried}}}]))
    before = [{"id": "a", "domain": "math", "reward": 0.5}, {"id": "b", "domain": "math", "reward": 0.5}]
    after = [{"id": "a", "domain": "math", "reward": 1.0}, {"id": "b", "domain": "math", "reward": 0.5}]
    comparison = compare(before, after, 0)
    reused = columns(parent, "k", comparison, before, after, parent.name, "rl-stage-4", resampled=False)
    assert [c["name"] for c in reused] == ["rl-stage-3", "rl-stage-4"]
    again = columns(parent, "k", comparison, before, after, parent.name, "rl-stage-4", resampled=True)
    assert [c["name"] for c in again] == ["rl-stage-3", "rl-stage-3 (sampled again)", "rl-stage-4"]
    assert again[1]["domains"]["math"]["mean"] == 0.5 and again[2]["domains"]["math"]["change"] == 0.25
    # another suite: nothing is carried, the start is the answers the change is from
    assert [c["name"] for c in columns(parent, "other", comparison, before, after, parent.name, "rl-stage-4",
                                       resampled=True)] == ["rl-stage-3", "rl-stage-4"]


def test_eval_table_puts_documents_of_one_stage_together_and_rl_rewards_by_domain():
    from stages.eval.results import stages_tables

    documents = [{"stage": "sft", "tasks": {"heldout": {"main_metric": "score", "value": 0.1}}},
                 {"stage": "sft", "tasks": {"rl_reward:math": {"main_metric": "reward", "value": 0.2}}},
                 {"stage": "rl stage 1", "tasks": {"rl_reward:math": {"main_metric": "reward", "value": 0.3},
                                                   "rl_reward:chat": {"main_metric": "reward", "value": 0.4, "metrics": {
                                                       "change": 0.1, "ci_low": -0.02, "ci_high": 0.2}}}}]
    benchmarks, rewards = stages_tables(documents)
    assert benchmarks.row_count == 1 and [c.header for c in benchmarks.columns] == ["stage", "heldout\nscore"]
    assert [c.header for c in rewards.columns] == ["domain", "sft", "rl stage 1"]
    assert list(rewards.columns[1].cells) == ["0.200", "-"]
    assert list(rewards.columns[2].cells) == ["0.300", "0.400\n+0.100 [-0.020, +0.200]"]  # a change with its interval


def test_fail_on_regression_exits_1_after_writing_the_checkpoint(checkpoint, tmp_path):
    """A parent whose lineage says every domain once scored 2 (more than any reward): the stage must report each
    domain as fallen past tolerance, carry the parent's column, and exit 1 with --fail-on-regression."""
    import shutil

    from granite_cli.data.records import ErrorPolicy
    from stages.rl.prompts import load_prompts
    from stages.rl.regression import suite, suite_key

    rows = [{"id": f"l{i}", "domain": "lowercase", "messages": [{"role": "user", "content": f"Say hi {i}"}],
             "verifier": {"type": "constraints", "constraints": [{"type": "lowercase"}]}} for i in range(16)]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, heldout, _ = load_prompts([str(prompts)], ErrorPolicy(), 0.3, reward_model=False)
    key = suite_key(suite(heldout, 32))
    parent = tmp_path / "parent"
    shutil.copytree(checkpoint, parent)
    best = {"name": "earlier", "domains": {d: {"n": 1, "mean": 2.0} for d in ("all", "lowercase")}}
    lineage = json.loads((parent / "lineage.json").read_text())
    lineage.append({"stage": "rl", "arguments": {"stage": 1}, "metrics": {"regression": {"suite": key, "columns": [best]}}})
    (parent / "lineage.json").write_text(json.dumps(lineage))
    args = [prompts, "--init-from", parent, "--run-dir", tmp_path / "run", "--steps", "1", "-G", "4", "--prompts-per-step", "2",
            "--max-new-tokens", "4", "--max-context", "64", "--heldout-fraction", "0.3", "--peak-tflops", "1"]
    warned = granite("rl", *args, "-o", tmp_path / "warned")
    assert warned.returncode == 0 and "warning: rl stage 1 regressed: all fell to" in warned.stderr.decode()
    failed = granite("rl", *args, "-o", tmp_path / "failed", "--fail-on-regression")
    assert failed.returncode == 1 and "the next stage should not build on it" in failed.stderr.decode()
    entry = json.loads((tmp_path / "failed" / "lineage.json").read_text())[-1]
    table = entry["metrics"]["regression"]
    # the parent answered again (its lineage holds no answers of its own): its column, then the change from it
    assert [c["name"] for c in table["columns"]] == ["earlier", "parent (sampled again)", "failed"]
    assert {f["domain"] for f in table["regressions"]} == {"all", "lowercase"}


def test_a_bad_pair_stops_the_reward_model_with_its_line(checkpoint, tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=3)
    with open(pairs, "a") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "Hi"}], "chosen": "Hello", "rejected": ""}) + "\n")
    out = tmp_path / "rm"
    result = granite("rl", "reward-model", pairs, "--init-from", checkpoint, "-o", out, "--run-dir", tmp_path / "run")
    assert result.returncode == 2
    assert f"{pairs}:4: 'rejected' must be an assistant message or its text" in result.stderr.decode()
    assert not out.exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    nothing = granite("rl", "reward-model", empty, "--init-from", checkpoint, "-o", out, "--run-dir", tmp_path / "run")
    assert nothing.returncode == 2 and f"no preference pairs in {empty}" in nothing.stderr.decode() and not out.exists()
    listed = granite("rl", "--help").stdout.decode()
    assert "reward-model" in listed and "run" in listed
