"""granite rl with an external rollout server: the weight push follows vLLM's shared-disk protocol and delivers the
policy's weights, the samples come back as token ids with the server's log-probabilities, and truncated importance
sampling weights each token by min(pi_trainer / pi_server, C)."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import granite
from fake_vllm import FakeVLLM
from stages.rl.objective import PolicyLoss
from stages.rl.server import RolloutServer
from test_rl import FAST, metrics, write_prompts


def test_truncated_importance_sampling_weights_by_hand():
    """Trainer log-probability -1 everywhere; the server's: 4x less likely (weight 4, capped at 2), twice as likely
    (0.5), equal (1), not given (1). Advantage 1 on every token, one update: pg per token = -weight."""
    loss = PolicyLoss("dapo", 0.2, 0.28, beta=0.0, tis_cap=2.0)
    logprobs = torch.full((1, 4), -1.0, requires_grad=True)
    sampler = torch.tensor([[-1.0 - math.log(4), -1.0 + math.log(2), -1.0, float("nan")]])
    micro = {"advantages": torch.ones(1, 4), "loss_mask": torch.ones(1, 4), "token_weight": torch.ones(1, 4),
             "rollout_logprobs": sampler, "sequences": torch.tensor([1.0]), "trained_sequences": torch.tensor([1.0])}
    loss.denominator(micro)
    total, logged = loss(logprobs, torch.zeros(1, 4), micro)
    assert float(total.detach()) == pytest.approx(-(2.0 + 0.5 + 1.0 + 1.0))
    total.backward()
    assert torch.allclose(logprobs.grad, -torch.tensor([[2.0, 0.5, 1.0, 1.0]]))  # the weight scales the gradient
    assert float(logged["tis_capped"]) == 1 and float(logged["tis_weight"]) == pytest.approx(4.5)


def test_a_completion_keeps_its_token_ids_and_the_end_tokens_log_probability():
    class Tokenizer:
        eos_token_id = 0

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    server = RolloutServer("http://127.0.0.1:1/v1", "/tmp/w", Tokenizer(), "m")
    assert server.url == "http://127.0.0.1:1"
    ended = server.completion({"finish_reason": "stop", "logprobs": {"tokens": ["token_id:5", "token_id:7", "token_id:0"],
                                                                      "token_logprobs": [-0.5, -1.5, -0.1]}})
    assert (ended.token_ids, ended.logprobs, ended.text, ended.finish_reason) == ([5, 7], [-0.5, -1.5, -0.1], "5 7", "stop")
    cut = server.completion({"finish_reason": "length", "logprobs": {"tokens": ["token_id:5"], "token_logprobs": [-0.5]}})
    assert (cut.token_ids, cut.finish_reason) == ([5], "length")


@pytest.fixture()
def fake_vllm(checkpoint):
    server = FakeVLLM(checkpoint)
    yield server
    server.close()


def test_rl_samples_from_the_server_and_pushes_the_policy_before_each_rollout_step(fake_vllm, checkpoint, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "rl"
    granite("rl", prompts, "--init-from", checkpoint, "-o", out, "--run-dir", tmp_path / "run", "--steps", "2", *FAST,
            "--rollout-server", fake_vllm.url + "/v1", check=True)
    # vLLM's order: init once, then start / update / finish before each of the two rollout steps
    assert fake_vllm.calls == ["init_weight_transfer_engine"] + ["start_weight_update", "update_weights",
                                                                 "finish_weight_update"] * 2
    start = load_file(str(checkpoint / "model.safetensors"))
    first, second = fake_vllm.pushed
    assert all(torch.equal(first[name], start[name]) for name in start)  # step 1 samples from the starting weights
    assert any(not torch.equal(second[name], start[name]) for name in start)  # step 2 from the weights after step 1
    assert fake_vllm.versions == ["step-0", "step-1"]
    body = fake_vllm.completions[0]
    assert body["n"] == 8 and body["logprobs"] == 0 and body["return_tokens_as_token_ids"] is True
    assert isinstance(body["prompt"], list) and all(isinstance(t, int) for t in body["prompt"])
    assert len(fake_vllm.completions) == 2 * 4  # four prompts a step, one request each for its group
    for line in metrics(out):
        # the server's model is the trainer's, in fp32: the importance weights are 1 and nothing is capped
        assert line["tis_weight"] == pytest.approx(1.0, abs=1e-3) and line["sampler_gap"] < 1e-3, line
        assert line["tis_capped"] == 0 and line["seconds_weight_push"] > 0
    entry = json.loads((out / "lineage.json").read_text())[-1]
    assert entry["arguments"]["rollout_server"] == fake_vllm.url + "/v1" and entry["arguments"]["tis_cap"] == 2.0
    assert not (tmp_path / ".rl.partial").exists()  # the pushed weights went with the work directory


def test_a_server_without_the_weight_routes_stops_the_run_with_the_way_to_start_it(checkpoint, tmp_path):
    from fake_openai import FakeOpenAI

    with FakeOpenAI(lambda body, attempt: (404, None)) as plain:
        result = granite("rl", write_prompts(tmp_path / "p.jsonl"), "--init-from", checkpoint, "-o", tmp_path / "rl",
                         "--run-dir", tmp_path / "run", "--steps", "1", *FAST, "--rollout-server", plain.url)
    assert result.returncode != 0 and b"VLLM_SERVER_DEV_MODE=1" in result.stderr
    assert not (tmp_path / "rl").exists()


@pytest.mark.parametrize("flag", [["--rollout-server", "ftp://host"], ["--tis-cap", "0.5"], ["--temperature", "0"]])
def test_a_bad_rollout_flag_stops_before_the_run_takes_its_directory(checkpoint, tmp_path, flag):
    result = granite("rl", write_prompts(tmp_path / "p.jsonl"), "--init-from", checkpoint, "-o", tmp_path / "rl",
                     "--run-dir", tmp_path / "run", *FAST, *flag)
    assert result.returncode == 2 and result.stderr.count(b"\n") == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]
