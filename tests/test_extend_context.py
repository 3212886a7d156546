"""Phase 5: whole documents packed without attention across them, RoPE written for plain transformers, merges
(bitwise self-merge, the hand-computed average, refusals), and `granite extend-context` end to end."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, granite
from granite_cli.data.documents import PackedDocuments
from granite_cli.data.shards import ShardSet
from granite_cli.training import IGNORE
from granite_cli.training.logprobs import TokenLogprobs
from model.merging import merge_states
from model.rope import extended_rope, ntk_theta


def long_documents(n=24, words=2400):
    """Documents of 2,400, 1,200 and 800 words (about 1-4K tokens), cut from the README."""
    text = (REPO / "README.md").read_text().split() * 3
    return [{"id": f"d{i}", "text": " ".join(text[(i * 97) % 3000:][:words // (1 + i % 3)]), "source": "books"} for i in range(n)]


@pytest.fixture(scope="module")
def shards(tokenizer_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("long")
    docs = tmp / "docs.jsonl"
    docs.write_text("".join(json.dumps(d) + "\n" for d in long_documents()))
    out = tmp / "shards"
    granite("tokenize", docs, "-t", tokenizer_dir, "-o", out, check=True)
    return out


def test_every_token_is_packed_once_and_positions_restart_per_piece(shards):
    shard_set = ShardSet(shards)
    packed = PackedDocuments([shard_set], 256, seed=0, batch_size=4, holdout_every=5)
    total = sum(int(shard_set.ends(i)[-1]) for i in range(len(shard_set.shards)))
    assert packed.tokens + 256 * len(packed.held) <= total  # lone trailing tokens are dropped, nothing else
    assert total - packed.tokens - 256 * len(packed.held) <= len(shard_set.ends(0))
    assert len(packed.held) >= 1 and all(end - begin == 256 for *_, begin, end in packed.held)
    batch = packed.batch(0)
    assert batch["input_ids"].shape == (4, 256)
    for row in range(4):
        starts = (batch["position_ids"][row] == 0).nonzero().flatten().tolist()
        for start in starts[1:]:  # the token before a piece starts predicts nothing from the next piece
            assert batch["labels"][row, start - 1] == IGNORE


def test_a_packed_row_gives_each_document_its_logits_alone(shards, checkpoint):
    from model.checkpoint import load_model

    model = TokenLogprobs(load_model(checkpoint, dtype=torch.float32)).eval()
    packed = PackedDocuments([ShardSet(shards)], 256, seed=0, batch_size=1)
    row = next(r for r in packed.rows if len(r) >= 2)
    batch = packed.make_rows([[packed.pieces[i] for i in row]])
    with torch.no_grad():
        together, _ = model(batch["input_ids"], batch["labels"], batch["position_ids"])
        start = 0
        for i in row:
            alone = packed.make_rows([[packed.pieces[i]]])
            n = packed.pieces[i][3] - packed.pieces[i][2]
            single, _ = model(alone["input_ids"][:, :n], alone["labels"][:, :n], alone["position_ids"][:, :n])
            torch.testing.assert_close(together[0, start:start + n], single[0], atol=2e-5, rtol=1e-5)
            start += n


def test_ntk_rule_and_rope_parameters():
    from transformers import GraniteConfig

    assert ntk_theta(10000.0, 4096, 32768, 64) == pytest.approx(10000 * 8 ** (64 / 62))
    config = GraniteConfig(hidden_size=64, num_attention_heads=4)
    assert extended_rope(config, 256, 1024, "theta", 4e4) == {"rope_type": "default", "rope_theta": 4e4}
    assert config.max_position_embeddings == 1024
    yarn = extended_rope(GraniteConfig(hidden_size=64, num_attention_heads=4), 256, 1024, "yarn")
    assert yarn["rope_type"] == "yarn" and yarn["factor"] == 4 and yarn["original_max_position_embeddings"] == 256


def test_linear_and_slerp_merges_by_hand():
    torch.manual_seed(0)
    a, b = {"w": torch.randn(4, 5), "n": torch.tensor([3])}, {"w": torch.randn(4, 5), "n": torch.tensor([3])}
    assert torch.equal(merge_states([a, a], "linear", [0.15, 0.85])["w"], a["w"])  # bitwise
    torch.testing.assert_close(merge_states([a, b], "linear", [0.15, 0.85])["w"], 0.15 * a["w"] + 0.85 * b["w"])
    assert torch.equal(merge_states([a, a], "slerp", [0.5, 0.5])["w"], a["w"])
    assert torch.equal(merge_states([a, b], "slerp", [1.0, 0.0])["w"], a["w"])
    x, y = a["w"].double().flatten(), b["w"].double().flatten()
    omega = torch.arccos(torch.dot(x / x.norm(), y / y.norm()))
    expected = (torch.sin(0.5 * omega) * x + torch.sin(0.5 * omega) * y) / torch.sin(omega)
    torch.testing.assert_close(merge_states([a, b], "slerp", [0.5, 0.5])["w"].double().flatten(), expected, atol=1e-6, rtol=1e-6)


@pytest.fixture(scope="module")
def other(checkpoint, tmp_path_factory):
    """The test checkpoint with every weight moved: a second model of the same architecture and tokenizer."""
    from model.checkpoint import load_model, read_lineage, save_checkpoint

    model = load_model(checkpoint, dtype=torch.float32)
    torch.manual_seed(1)
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in model.state_dict().items()}
    out = tmp_path_factory.mktemp("other") / "ckpt"
    save_checkpoint(out, state, model.config, checkpoint, read_lineage(checkpoint))
    return out


def test_granite_merge_self_is_bitwise_and_linear_is_the_average(checkpoint, other, tmp_path):
    granite("merge", checkpoint, checkpoint, "--weight", "0.15", "-o", tmp_path / "self", check=True)
    a, b = load_file(str(checkpoint / "model.safetensors")), load_file(str(tmp_path / "self" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    granite("merge", checkpoint, other, "--weight", "0.15", "-o", tmp_path / "avg", check=True)
    o, m = load_file(str(other / "model.safetensors")), load_file(str(tmp_path / "avg" / "model.safetensors"))
    assert all(torch.allclose(m[k], 0.15 * a[k] + 0.85 * o[k], atol=1e-6) for k in a)
    entry = json.loads((tmp_path / "avg" / "lineage.json").read_text())[-1]
    assert entry["stage"] == "merge" and [p["weight"] for p in entry["metrics"]["parents"]] == [0.15, 0.85]
    assert {p["path"] for p in entry["metrics"]["parents"]} == {str(checkpoint.resolve()), str(other.resolve())}


def test_ties_at_full_density_is_the_linear_merge_and_dare_keeps_a_share(checkpoint, other, tmp_path):
    """mergekit's task-vector merges: with the first model as base and density 1, TIES adds (1 - w) of the other's
    difference, which is the linear merge; DARE at density 0.5 keeps about half of the difference's entries."""
    pytest.importorskip("mergekit")
    granite("merge", checkpoint, other, "--method", "ties", "--weight", "0.15", "-o", tmp_path / "ties", check=True)
    a, o = load_file(str(checkpoint / "model.safetensors")), load_file(str(other / "model.safetensors"))
    ties = load_file(str(tmp_path / "ties" / "model.safetensors"))
    assert all(torch.allclose(ties[k], 0.15 * a[k] + 0.85 * o[k], atol=1e-5) for k in a)
    granite("merge", checkpoint, other, "--method", "dare_linear", "--weight", "0", "--density", "0.5", "-o",
            tmp_path / "dare", check=True)
    dare = load_file(str(tmp_path / "dare" / "model.safetensors"))
    name = next(k for k in a if a[k].numel() > 1000)
    kept = (dare[name] != a[name]).float().mean()
    assert 0.4 < kept < 0.6
    assert json.loads((tmp_path / "dare" / "lineage.json").read_text())[-1]["arguments"]["method"] == "dare_linear"


def test_granite_merge_refuses_other_shapes_or_tokenizers(checkpoint, tokenizer_dir, tmp_path):
    from transformers import GraniteForCausalLM

    from granite_cli.data.tokenizer_io import load_tokenizer
    from model.checkpoint import save_checkpoint
    from model.presets import build_config

    tok = load_tokenizer(str(tokenizer_dir))
    config = build_config("depth-3", vocab_size=len(tok), bos_id=tok.eos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    deeper = tmp_path / "deeper"
    save_checkpoint(deeper, GraniteForCausalLM(config).state_dict(), config, tokenizer_dir, [])
    result = granite("merge", checkpoint, deeper, "-o", tmp_path / "out")
    assert result.returncode == 2 and "not the same architecture" in result.stderr.decode() and not (tmp_path / "out").exists()
    retokenized = tmp_path / "retokenized"
    granite("tokenize", "train", "--vocab-size", "1024", "--max-bytes", "100K", "-o", tmp_path / "tok2",
            "--run-dir", tmp_path / "run", check=True)
    save_checkpoint(retokenized, load_file(str(checkpoint / "model.safetensors")),
                    GraniteForCausalLM.from_pretrained(str(checkpoint)).config, tmp_path / "tok2", [])
    result = granite("merge", checkpoint, retokenized, "-o", tmp_path / "out")
    assert result.returncode == 2 and "another tokenizer" in result.stderr.decode() and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def short_parent(checkpoint, tmp_path_factory):
    """The test checkpoint, recorded as pre-trained at 256 tokens (what extend-context reads as the old length)."""
    from model.checkpoint import load_model, save_checkpoint

    model = load_model(checkpoint, dtype=torch.float32)
    out = tmp_path_factory.mktemp("short") / "ckpt"
    save_checkpoint(out, model.state_dict(), model.config, checkpoint,
                    [{"stage": "pretrain", "arguments": {"phase": 4, "seq_len": 256}, "metrics": {}}])
    return out


@pytest.mark.parametrize("rope", ["theta", "yarn", "dynamic"])
def test_extend_context_trains_merges_and_runs_in_plain_transformers(shards, short_parent, tmp_path, rope):
    run = tmp_path / "run"
    result = granite("extend-context", shards, "--stage", "1K", "--init-from", short_parent, "--run-dir", run, "--steps", "3",
                     "--batch-tokens", "2048", "--merge-weights", "0,0.15,0.5", "--peak-tflops", "1", "--micro-batch", "2",
                     "--rope", rope)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    err = result.stderr.decode()
    assert "held-out loss by position" in err and "merge candidates" in err
    merged = run / "checkpoints" / "extend-context-1K"
    config = json.loads((merged / "config.json").read_text())
    if rope == "theta":
        assert config["rope_parameters"]["rope_theta"] == 4e4 and config["max_position_embeddings"] == 1024
    else:  # 256 -> 1024: factor 4 over the old length (dynamic starts scaling past it)
        assert config["rope_parameters"]["rope_type"] == rope and config["rope_parameters"]["factor"] == 4
        assert config["max_position_embeddings"] == (256 if rope == "dynamic" else 1024)
    lineage = json.loads((merged / "lineage.json").read_text())
    assert [e["stage"] for e in lineage[-2:]] == ["extend-context", "merge"]
    merge = lineage[-1]["arguments"]
    assert [c["parent_weight"] for c in merge["candidates"]] == [0, 0.15, 0.5] and "rule" in merge
    assert set(merge["loss_by_position"]) == {"parent", "extended", "merged"}
    # plain transformers (no granite code on the path) runs the merged model at its new length, with our logits
    ids = torch.randint(0, 1000, (1, 1024))
    torch.save(ids, tmp_path / "ids.pt")
    script = ("import torch\nfrom transformers import AutoModelForCausalLM\n"
              f"m=AutoModelForCausalLM.from_pretrained({str(merged)!r}).eval()\n"
              f"ids=torch.load({str(tmp_path / 'ids.pt')!r})\n"
              f"torch.save(m(input_ids=ids).logits, {str(tmp_path / 'plain.pt')!r})")
    plain = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, cwd="/",
                           env={"HF_HUB_OFFLINE": "1", "PATH": os.environ["PATH"]})
    assert plain.returncode == 0, plain.stderr.decode()[-2000:]
    from model.checkpoint import load_model

    ours = load_model(merged, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "plain.pt"), ours(input_ids=ids).logits)
    from model.rope import head_dim

    if rope == "theta":
        assert float(ours.model.rotary_emb.inv_freq[1]) == pytest.approx(4e4 ** (-2 / head_dim(ours.config)), rel=1e-4)


def test_killed_and_resumed_extension_matches_an_uninterrupted_one(shards, short_parent, tmp_path):
    from conftest import kill_after_first_checkpoint

    args = [shards, "--stage", "1K", "--init-from", short_parent, "--steps", "4", "--batch-tokens", "2048",
            "--checkpoint-every", "1", "--peak-tflops", "1", "--micro-batch", "2"]
    granite("extend-context", *args, "--run-dir", tmp_path / "straight", check=True)
    resumed = tmp_path / "resumed"
    kill_after_first_checkpoint(["extend-context", *args, "--run-dir", resumed],
                                resumed / "checkpoints" / ".extend-context-1K-trained.partial" / "checkpoints")
    granite("extend-context", *args, "--run-dir", resumed, "--resume", check=True)
    for name in ("extend-context-1K-trained", "extend-context-1K"):
        a = load_file(str(tmp_path / "straight" / "checkpoints" / name / "model.safetensors"))
        b = load_file(str(resumed / "checkpoints" / name / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    again = granite("extend-context", *args, "--run-dir", resumed, "--resume")  # finished: nothing to redo
    assert again.returncode == 0 and "is finished; resuming after it" in again.stderr.decode()


def test_context_parallel_attention_gives_one_process_s_logprobs_and_gradients(checkpoint):
    # a packed row of three documents and a plain row, their positions split zigzag across 2 processes
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29521",
                             str(REPO / "tests" / "context_parallel_worker.py"), str(checkpoint)],
                            capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert b"equal one process's" in result.stdout


def test_zigzag_gives_every_position_once_and_each_rank_the_same_causal_work():
    from granite_cli.training.context_parallel import zigzag

    parts = [zigzag(64, 4, rank) for rank in range(4)]
    assert sorted(torch.cat(parts).tolist()) == list(range(64))
    work = [int((p + 1).sum()) for p in parts]  # a query at position i attends to i + 1 keys
    assert len(set(work)) == 1, work


def test_extend_context_split_across_two_processes_trains_what_one_process_trains(shards, short_parent, tmp_path):
    args = [shards, "--stage", "1K", "--init-from", short_parent, "--steps", "2", "--batch-tokens", "2048",
            "--peak-tflops", "1", "--micro-batch", "2"]
    granite("extend-context", *args, "--run-dir", tmp_path / "one", check=True)
    for port, parallel in ((29522, "ddp"), (29523, "fsdp")):
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                                 str(port), "-m", "granite_cli", "extend-context", *map(str, args), "--run-dir",
                                 str(tmp_path / parallel), "--context-parallel", "2", "--parallel", parallel],
                                capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr.decode()[-3000:]
        for name in ("extend-context-1K-trained", "extend-context-1K"):
            one = load_file(str(tmp_path / "one" / "checkpoints" / name / "model.safetensors"))
            two = load_file(str(tmp_path / parallel / "checkpoints" / name / "model.safetensors"))
            for key in one:
                torch.testing.assert_close(two[key], one[key], atol=2e-5, rtol=1e-4, msg=f"{parallel} {name} {key}")
        lineage = json.loads((tmp_path / parallel / "checkpoints" / "extend-context-1K-trained" / "lineage.json").read_text())
        assert lineage[-1]["arguments"]["context_parallel"] == 2
    refused = granite("extend-context", *args, "--run-dir", tmp_path / "three", "--context-parallel", "3")
    assert refused.returncode == 2 and "must divide the number of processes (1)" in refused.stderr.decode()
    assert not (tmp_path / "three").exists()  # refused before anything is written
