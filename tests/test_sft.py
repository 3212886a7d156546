"""granite sft: our rendering is the template's, only assistant tokens train, packing changes nothing but speed."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, granite, kill_after_first_checkpoint
from granite_cli.errors import BadInput
from granite_cli.data.records import read_records
from granite_cli.training.logprobs import TokenLogprobs
from model.chat_format import ChatRenderer
from model.chat_template import GRANITE_CHAT_TEMPLATE
from granite_cli.data.packing import best_fit
from stages.sft import Conversation, PackedConversations, fit

TOOLS = [{"name": "get_weather", "description": "Weather for a city.",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
         {"name": "add", "description": "Sum two numbers.",
          "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}]
SAMPLES = [
    {"id": "plain", "messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help?"}]},
    {"id": "system-multi-turn", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4."},
        {"role": "user", "content": "Und auf Deutsch? Ünïcödé ✓"}, {"role": "assistant", "content": "Vier. ✓\n\nFertig."}]},
    {"id": "tools", "tools": TOOLS, "messages": [
        {"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Oslo, and 2 + 3?"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}},
                                                            {"name": "add", "arguments": {"a": 2, "b": 3}}]},
        {"role": "tool", "content": '{"temp": 3}'}, {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "3 degrees in Oslo; 2 + 3 = 5."}]},
    {"id": "tools-no-system-text-and-call", "tools": TOOLS[:1], "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Lima"}}]},
        {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny in Lima."}]},
    {"id": "rag", "documents": [{"id": "d1", "text": "Oslo is in Norway."}, {"id": "d2", "text": "Lima is in Peru."}],
     "messages": [{"role": "system", "content": "Cite."}, {"role": "user", "content": "Where is Lima?"},
                  {"role": "assistant", "content": "In Peru [d2]."}]},
]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def test_rendering_equals_plain_apply_chat_template(tokenizer):
    assert tokenizer.chat_template == GRANITE_CHAT_TEMPLATE
    rendered = ChatRenderer(tokenizer).render(SAMPLES)
    for sample, ours in zip(SAMPLES, rendered):
        theirs = tokenizer.apply_chat_template(sample["messages"], tools=sample.get("tools"),
                                               documents=sample.get("documents"), tokenize=True)["input_ids"]
        assert ours.ids.tolist() == theirs, sample["id"]


def test_only_assistant_content_and_its_end_of_turn_are_trained(tokenizer):
    renderer = ChatRenderer(tokenizer)
    for sample, ours in zip(SAMPLES, renderer.render(SAMPLES)):
        trained_text = tokenizer.decode(ours.ids[ours.trained].tolist())
        expected = ""
        for message in sample["messages"]:
            if message["role"] == "assistant":
                calls = "".join(("\n" if (i == 0 and message["content"]) or i else "") + "<tool_call>" +
                                json.dumps({"name": c["name"], "arguments": c["arguments"]}, ensure_ascii=False) + "</tool_call>"
                                for i, c in enumerate(message.get("tool_calls") or []))
                expected += message["content"] + calls + "<|end_of_text|>"
        assert trained_text == expected, sample["id"]


def test_loss_mask_is_the_templates_assistant_mask(tokenizer):
    """The template marks assistant turns with {% generation %}: transformers (and TRL) derive the same mask."""
    for sample, ours in zip(SAMPLES, ChatRenderer(tokenizer).render(SAMPLES)):
        theirs = tokenizer.apply_chat_template(sample["messages"], tools=sample.get("tools"), documents=sample.get("documents"),
                                               tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert ours.trained.astype(int).tolist() == theirs["assistant_masks"], sample["id"]


def test_string_tool_arguments_render_as_objects(tokenizer):
    sample = json.loads(json.dumps(SAMPLES[3]))
    sample["messages"][1]["tool_calls"][0]["arguments"] = '{"city": "Lima"}'
    renderer = ChatRenderer(tokenizer)
    assert renderer.render([sample])[0].ids.tolist() == renderer.render([SAMPLES[3]])[0].ids.tolist()


@pytest.mark.parametrize("where", [1, 0])
def test_template_token_inside_content_is_refused(tokenizer, where):
    sample = json.loads(json.dumps(SAMPLES[0]))
    sample["messages"][where]["content"] += " <|end_of_text|>"
    with pytest.raises(BadInput, match="template token <\\|end_of_text\\|>"):
        ChatRenderer(tokenizer).render([sample])


def test_best_fit_packs_every_conversation_once_within_capacity():
    lengths = [7, 5, 4, 3, 3, 2, 1, 9]
    rows = best_fit(lengths, 10, np.arange(len(lengths)))
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 4  # 34 tokens: 4 rows is the least possible


def conversation(n_context: int, n_answer: int, start: int = 10) -> Conversation:
    ids = np.arange(start, start + n_context + n_answer, dtype=np.int32)
    return Conversation(ids, np.array([False] * n_context + [True] * n_answer))


def test_overlong_conversations_are_truncated_or_dropped_and_counted():
    counts = {"truncated": 0, "dropped_too_long": 0}
    assert len(fit(conversation(4, 4), 8, "truncate", {}, counts).ids) == 8
    cut = fit(conversation(6, 10), 8, "truncate", {}, counts)
    assert len(cut.ids) == 8 and cut.trained[6:].all() and counts["truncated"] == 1
    assert fit(conversation(8, 4), 8, "truncate", {}, counts) is None  # nothing of the answer would stay
    assert fit(conversation(6, 10), 8, "drop", {}, counts) is None
    assert counts == {"truncated": 1, "dropped_too_long": 2}


def test_packed_batch_gives_the_same_loss_as_one_by_one(tokenizer, checkpoint):
    from model.checkpoint import load_model

    model = load_model(checkpoint, dtype=torch.float32)
    rendered = ChatRenderer(tokenizer).render(SAMPLES)
    conversations = [Conversation(r.ids, r.trained) for r in rendered]
    total = sum(len(c.ids) for c in conversations)
    packed = PackedConversations(conversations, total + 7, 1, 0, 1, True, tokenizer.pad_token_id)
    assert packed.rows_per_epoch == 1  # all five conversations (and some padding) in one sequence
    batch = packed.rows_at([0])
    scorer = TokenLogprobs(model)
    with torch.no_grad():
        packed_loss = -scorer(batch["input_ids"], batch["labels"], batch["position_ids"])[0].sum()
        alone = [PackedConversations([c], len(c.ids), 1, 0, 1, True, tokenizer.pad_token_id).rows_at([0]) for c in conversations]
        one_by_one = -sum(scorer(b["input_ids"], b["labels"])[0].sum() for b in alone)
    targets = int((batch["labels"] != -100).sum())
    assert targets == sum(int(c.trained[1:].sum()) for c in conversations)
    assert torch.allclose(packed_loss, one_by_one, rtol=1e-5)
    # token by token: each conversation's logits in the packed row are its logits alone; without the position ids
    # (a plain causal mask) the later conversations would see the earlier ones and their logits would move
    with torch.no_grad():
        packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        leaky_logits = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
        start = 0
        for c in (conversations[i] for i in packed.rows[0]):  # in the order the row holds them
            alone = model(input_ids=torch.tensor(c.ids[None], dtype=torch.long), use_cache=False).logits[0]
            end = start + len(c.ids)
            assert torch.allclose(packed_logits[start:end], alone, atol=1e-4)
            if start:
                assert (leaky_logits[start:end] - alone).abs().max() > 1e-3
            start = end


def test_batches_are_a_pure_function_of_the_step(tokenizer):
    conversations = [Conversation(r.ids, r.trained) for r in ChatRenderer(tokenizer).render(SAMPLES * 4)]
    a = PackedConversations(conversations, 512, 2, 3, 2.0, True, 0)
    b = PackedConversations(conversations, 512, 2, 3, 2.0, True, 0)
    for step in (0, a.steps - 1, 1):
        assert all(torch.equal(a.batch(step)[k], b.batch(step)[k]) for k in ("input_ids", "labels", "position_ids"))


def write_samples(path, samples):
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    return path


@pytest.fixture(scope="module")
def sft_run(checkpoint, tmp_path_factory):
    """SFT of the untrained checkpoint on 96 bundled samples: enough steps for the loss to fall."""
    tmp = tmp_path_factory.mktemp("sft")
    samples = [s for s in read_records([str(REPO / "examples" / "data" / "chat" / "sft.jsonl.zst")])
               if not (s.get("meta") or {}).get("defect")][:96]
    data = write_samples(tmp / "data.jsonl", samples)
    out = tmp / "sft"
    granite("sft", data, "--init-from", checkpoint, "-o", out, "--run-dir", tmp / "run", *FAST, check=True)
    return out, data


FAST = ["--seq-len", "256", "--batch-sequences", "4", "--micro-batch", "2", "--epochs", "3", "--lr", "3e-3",
        "--log-every", "1", "--peak-tflops", "1", "--val-fraction", "0.1"]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sft_loss_falls_and_the_checkpoint_chats_in_plain_transformers(sft_run):
    out, _ = sft_run
    losses = [m["loss"] for m in metrics(out) if "loss" in m]
    assert len(losses) >= 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.0
    assert "val_loss" in metrics(out)[-1]
    assert (out / "chat_template.jinja").read_text() == GRANITE_CHAT_TEMPLATE
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage[-1]["stage"] == "sft" and lineage[-1]["arguments"]["conversations"]["train"] > 0
    script = ("import sys\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
              f"t=AutoTokenizer.from_pretrained({str(out)!r}); m=AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
              "ids=t.apply_chat_template([{'role':'user','content':'Hi'}], add_generation_prompt=True, return_tensors='pt')\n"
              "print(m.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids['input_ids'].shape[1])")
    plain = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, cwd="/",
                           env={"HF_HUB_OFFLINE": "1", "PATH": os.environ["PATH"]})
    assert plain.stdout.decode().strip() == "True", plain.stderr.decode()[-2000:]


def test_sft_refuses_template_tokens_unless_told_to_skip(sft_run, checkpoint, tmp_path):
    _, data = sft_run
    bad = json.loads(data.read_text().splitlines()[0])
    bad["messages"][0]["content"] += "<|start_of_role|>"
    mixed = write_samples(tmp_path / "mixed.jsonl", [bad] + [json.loads(line) for line in data.read_text().splitlines()])
    args = ["sft", mixed, "--init-from", checkpoint, "-o", tmp_path / "out", "--run-dir", tmp_path / "run", *FAST]
    result = granite(*args)
    assert result.returncode == 2 and "template token <|start_of_role|>" in result.stderr.decode()
    skipped = granite(*args, "--on-error", "skip", "--epochs", "1")
    assert skipped.returncode == 0 and "skipped 1 bad record(s): 1 template token in content" in skipped.stderr.decode()


def test_granite_chat_answers_piped_lines(sft_run):
    out, _ = sft_run
    result = granite("chat", out, "--max-new-tokens", "5", input=b"Hello\n/reset\nWhat is 2 + 2?\n/exit\n")
    assert result.returncode == 0, result.stderr.decode()
    assert len(result.stdout.decode().splitlines()) == 2  # one streamed answer line per user turn


def test_killed_and_resumed_sft_matches_an_uninterrupted_one(sft_run, checkpoint, tmp_path):
    from safetensors.torch import load_file

    _, data = sft_run
    args = [data, "--init-from", checkpoint, "--run-dir", tmp_path / "run", *FAST, "--checkpoint-every", "3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    granite("sft", *args, "-o", straight, check=True)
    workdir = tmp_path / ".resumed.partial" / "checkpoints"
    kill_after_first_checkpoint(["sft", *args, "-o", resumed], workdir)
    granite("sft", *args, "-o", resumed, "--resume", check=True)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    curve = lambda path: [{k: v for k, v in m.items() if k not in ("tokens_per_second", "mfu")} for m in metrics(path)]
    assert curve(straight) == curve(resumed)


def test_two_processes_match_one(sft_run, checkpoint, tmp_path):
    from safetensors.torch import load_file

    _, data = sft_run
    args = [str(data), "--init-from", str(checkpoint), "--run-dir", str(tmp_path / "run"), *FAST, "--epochs", "1"]
    granite("sft", *args, "-o", tmp_path / "single", check=True)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
                             "-m", "granite_cli", "sft", *args, "-o", str(tmp_path / "double"), "--parallel", "ddp"],
                            capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    a, b = load_file(str(tmp_path / "single" / "model.safetensors")), load_file(str(tmp_path / "double" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=2e-5, rtol=1e-4) for k in a)
    losses = lambda path: [m["loss"] for m in metrics(path) if "loss" in m]
    assert losses(tmp_path / "single") == pytest.approx(losses(tmp_path / "double"), rel=1e-4)


OURS = {"id": "t", "tools": [{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "messages": [{"role": "user", "content": "Weather in Oslo?"},
                     {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]},
                     {"role": "tool", "content": "{\"temp\": 3}"}, {"role": "assistant", "content": "3 degrees."}]}
OPENAI = {**OURS, "tools": [{"type": "function", "function": OURS["tools"][0]}],
          "messages": [OURS["messages"][0], {"role": "assistant", "content": None, "tool_calls": [
              {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
              *OURS["messages"][2:]]}


def test_openai_shaped_samples_train_exactly_like_ours(tokenizer):
    from stages.sft import normalized

    renderer = ChatRenderer(tokenizer)
    [ours], [theirs] = renderer.render([normalized(OURS)]), renderer.render([normalized(OPENAI)])
    assert ours.ids.tolist() == theirs.ids.tolist() and ours.trained.tolist() == theirs.trained.tolist()


@pytest.mark.parametrize("broken, named", [
    ({**SAMPLES[0], "messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}, "no valid role"),
    ({**SAMPLES[0], "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}, "empty assistant turn"),
    ({**SAMPLES[0], "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]}, "empty assistant turn"),
    ({**SAMPLES[0], "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ["a", "list"]}]}, "not a string"),
    ({**OURS, "messages": [OURS["messages"][0], {"role": "assistant", "content": "", "tool_calls": [
        {"name": "get_weather", "arguments": "{city: Oslo"}]}, *OURS["messages"][2:]]}, "do not parse as JSON"),
])
def test_sft_refuses_what_filter_rejects(broken, named):
    from stages.sft import normalized

    with pytest.raises(BadInput, match=named):
        normalized(broken)
