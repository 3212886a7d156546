"""granite pretrain: loss falls, resume is exact, data parallel matches one process, checkpoints load in plain transformers."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import granite, kill_after_first_checkpoint
from test_tokenize import sample_documents, write_jsonl

FAST = ["--preset", "depth-2", "--seq-len", "64", "--batch-tokens", "1024", "--micro-batch", "8", "--peak-tflops", "1",
        "--log-every", "1"]


@pytest.fixture(scope="module")
def run_dir(tokenizer_dir, tmp_path_factory):
    """A run directory with a tokenizer, phase-1 shards and held-out shards, as `make all` lays it out."""
    run = tmp_path_factory.mktemp("pretrain") / "run"
    shutil.copytree(tokenizer_dir, run / "tokenizer")
    docs = sample_documents(per_source=12, seed=1)
    granite("tokenize", write_jsonl(run.parent / "train.jsonl", docs[::2]), "--run-dir", run, "--phase", "1", check=True)
    granite("tokenize", write_jsonl(run.parent / "val.jsonl", docs[1::2][:20]), "--run-dir", run, "-o",
            run / "shards" / "heldout", check=True)
    return run


def metrics(checkpoint):
    return [json.loads(line) for line in (checkpoint / "metrics.jsonl").read_text().splitlines()]


def weights(checkpoint):
    return load_file(str(checkpoint / "model.safetensors"))


def test_loss_falls_and_the_checkpoint_is_complete(run_dir):
    out = run_dir / "checkpoints" / "loss"
    granite("pretrain", "--run-dir", run_dir, "-o", out, "--steps", "30", *FAST, check=True)
    losses = [m["loss"] for m in metrics(out) if "loss" in m]
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0
    final = metrics(out)[-1]
    assert final["val_loss"] > 0 and 0 < final["val_bpb"] < 10
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage[-1]["stage"] == "pretrain" and lineage[-1]["metrics"]["steps"] == 30
    machine = lineage[-1]["machine"]  # what decides the last bits: torch, the CPU's kernels, threads
    assert machine["torch"] == torch.__version__ and machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["threads"] >= 1 and machine["cpu"] and "cpu_caches" in machine
    assert not (run_dir / "checkpoints" / ".loss.partial").exists()
    info = " ".join(granite("info", out, check=True).stderr.decode().split())
    assert "pretrain" in info and "GraniteForCausalLM" in info
    assert f"ran on torch {torch.__version__}" in info and f"{machine['cpu_capability']} kernels" in info


def test_info_says_where_the_machine_changes_along_the_lineage(run_dir, tmp_path):
    out = run_dir / "checkpoints" / "loss"
    if not out.exists():
        granite("pretrain", "--run-dir", run_dir, "-o", out, "--steps", "3", *FAST, check=True)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    entry = json.loads((copy / "lineage.json").read_text())[-1]
    elsewhere = {**entry, "machine": {**entry["machine"], "cpu_capability": "AVX2"}}
    (copy / "lineage.json").write_text(json.dumps([entry, entry, elsewhere]))
    info = " ".join(granite("info", copy, check=True).stderr.decode().split())
    assert "#1 ran on" in info and "#2 ran on" not in info and "#3 ran on" in info and "AVX2 kernels" in info


def test_checkpoint_loads_in_plain_transformers_with_the_same_logits(run_dir):
    out = run_dir / "checkpoints" / "loss"
    if not out.exists():
        granite("pretrain", "--run-dir", run_dir, "-o", out, "--steps", "3", *FAST, check=True)
    ids = [[5, 17, 300, 42, 9, 1000]]
    script = ("import json,sys,torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
              f"m=AutoModelForCausalLM.from_pretrained({str(out)!r}); AutoTokenizer.from_pretrained({str(out)!r})\n"
              f"print(json.dumps(m(torch.tensor({ids})).logits.tolist()))")
    plain = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, cwd="/", check=True,
                           env={"HF_HUB_OFFLINE": "1", "PATH": os.environ["PATH"]})
    from transformers import GraniteConfig, GraniteForCausalLM

    config = GraniteConfig.from_pretrained(str(out))
    ours = GraniteForCausalLM(config)
    state = weights(out)
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    ours.load_state_dict(state)
    expected = ours(torch.tensor(ids)).logits
    assert torch.allclose(torch.tensor(json.loads(plain.stdout)), expected, atol=1e-5)


def test_killed_and_resumed_run_matches_an_uninterrupted_one(run_dir):
    steps = ["--steps", "24", "--checkpoint-every", "4", "--eval-every", "8"]
    straight = run_dir / "checkpoints" / "straight"
    granite("pretrain", "--run-dir", run_dir, "-o", straight, *steps, *FAST, check=True)

    resumed = run_dir / "checkpoints" / "resumed"
    workdir = run_dir / "checkpoints" / ".resumed.partial" / "checkpoints"
    kill_after_first_checkpoint(["pretrain", "--run-dir", run_dir, "-o", resumed, *steps, *FAST], workdir)
    assert not resumed.exists()
    again = granite("pretrain", "--run-dir", run_dir, "-o", resumed, *steps, *FAST)
    assert again.returncode == 2 and "--resume" in again.stderr.decode()
    granite("pretrain", "--run-dir", run_dir, "-o", resumed, *steps, *FAST, "--resume", check=True)

    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    curve = lambda path: [{k: v for k, v in m.items() if k not in ("tokens_per_second", "mfu")} for m in metrics(path)]
    assert curve(straight) == curve(resumed)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(run_dir, parallel):
    single = run_dir / "checkpoints" / "single"
    if not single.exists():
        granite("pretrain", "--run-dir", run_dir, "-o", single, "--steps", "6", *FAST, check=True)
    double = run_dir / "checkpoints" / f"double-{parallel}"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                             str(29500 + (parallel == "fsdp")), "-m", "granite_cli", "pretrain", "--run-dir",
                             str(run_dir), "-o", str(double), "--steps", "6", "--parallel", parallel, *FAST],
                            capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    a, b = weights(single), weights(double)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=2e-5, rtol=1e-4), name
    losses = lambda path: [m["loss"] for m in metrics(path) if "loss" in m]
    assert losses(single) == pytest.approx(losses(double), rel=1e-4)


def test_shards_from_another_tokenizer_are_refused(run_dir, tmp_path):
    other = tmp_path / "tok"
    granite("tokenize", "train", "--vocab-size", "400", "--max-bytes", "30K", "-o", other, "--run-dir", tmp_path, check=True)
    docs = write_jsonl(tmp_path / "d.jsonl", sample_documents(per_source=1))
    granite("tokenize", docs, "-t", other, "-o", tmp_path / "shards", check=True)
    result = granite("pretrain", tmp_path / "shards", "--run-dir", run_dir, "-o", tmp_path / "ckpt", *FAST)
    assert result.returncode == 2 and "another tokenizer" in result.stderr.decode()
    assert not (tmp_path / "ckpt").exists()


def test_truncated_shard_is_refused(run_dir, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(run_dir / "shards" / "phase-1", shards)
    tokens = shards / "shard-00000.tokens"
    tokens.write_bytes(tokens.read_bytes()[:-10])
    result = granite("pretrain", shards, "--run-dir", run_dir, "-o", tmp_path / "ckpt", *FAST)
    assert result.returncode == 2 and "does not match the manifest" in result.stderr.decode()


@pytest.mark.parametrize("flags, message", [
    (["--seq-len", "200000"], "max_position_embeddings"),
    (["--batch-tokens", "1088", "--micro-batch", "3"], "must be a multiple of micro batch"),
    (["--batch-tokens", "100M"], "fewer than one batch"),
])
def test_bad_settings_are_bad_usage(run_dir, tmp_path, flags, message):
    result = granite("pretrain", "--run-dir", run_dir, "-o", tmp_path / "ckpt", *FAST, *flags)
    assert result.returncode == 2 and message in result.stderr.decode()


def test_a_later_phase_needs_the_previous_one(run_dir, tmp_path):
    result = granite("pretrain", "--phase", "3", "--run-dir", tmp_path, *FAST)
    assert result.returncode == 2 and "train phase 2 first" in result.stderr.decode()


def test_a_directory_of_job_array_parts_counts_as_all_of_them(run_dir, tmp_path):
    from granite_cli.data.tokenizer_io import load_tokenizer_checked
    from granite_cli.data.windows import open_shards

    parts = tmp_path / "phase-1"
    for index in range(2):
        docs = write_jsonl(tmp_path / f"d{index}.jsonl", sample_documents(per_source=1, seed=index))
        granite("tokenize", docs, "-t", run_dir / "tokenizer", "-o", parts / f"part-{index}", check=True)
    sets = open_shards([parts], load_tokenizer_checked(run_dir / "tokenizer")["sha256"])
    assert [s.directory.name for s in sets] == ["part-0", "part-1"]


def test_step_checkpoints_stay_beside_the_final_one_and_an_interrupted_save_is_dropped(run_dir):
    out = run_dir / "checkpoints" / "beside"
    workdir = run_dir / "checkpoints" / ".beside.partial" / "checkpoints"
    steps = ["--steps", "12", "--checkpoint-every", "4"]
    kill_after_first_checkpoint(["pretrain", "--run-dir", run_dir, "-o", out, *steps, *FAST], workdir)
    (workdir / ".step-0000008.tmp-12345").mkdir()  # what a kill in the middle of a save leaves
    granite("pretrain", "--run-dir", run_dir, "-o", out, *steps, *FAST, "--resume", check=True)
    assert not (out / "checkpoints").exists() and (out / "metrics.jsonl").exists()
    kept = sorted(p.name for p in (run_dir / "checkpoints" / "beside.steps").iterdir())
    assert kept == ["step-0000004", "step-0000008"]  # --keep-last 2; the interrupted save is gone


def test_resume_refuses_a_finished_run_and_settings_other_than_the_runs(run_dir):
    finished = run_dir / "checkpoints" / "finished"
    steps = ["--steps", "8", "--checkpoint-every", "2"]
    granite("pretrain", "--run-dir", run_dir, "-o", finished, *steps, *FAST, check=True)
    before = weights(finished)
    again = granite("pretrain", "--run-dir", run_dir, "-o", finished, *steps, *FAST, "--resume")
    assert again.returncode == 2 and "nothing to resume" in again.stderr.decode()
    after = weights(finished)
    assert all(torch.equal(before[k], after[k]) for k in before)  # not retrained, not replaced

    cut = run_dir / "checkpoints" / "cut"
    kill_after_first_checkpoint(["pretrain", "--run-dir", run_dir, "-o", cut, *steps, *FAST], run_dir / "checkpoints" / ".cut.partial" / "checkpoints")
    for changed, named in ((["--seed", "7"], "seed 0 -> 7"), (["--lr", "0.5"], "schedule"), (["--steps", "9"], "steps 8 -> 9")):
        flags = [*steps, *FAST, *changed] if changed[0] != "--steps" else ["--steps", "9", "--checkpoint-every", "2", *FAST]
        result = granite("pretrain", "--run-dir", run_dir, "-o", cut, *flags, "--resume")
        assert result.returncode == 2 and named in result.stderr.decode(), result.stderr.decode()
    granite("pretrain", "--run-dir", run_dir, "-o", cut, *steps, *FAST, "--resume", check=True)  # the same flags go on


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(run_dir):
    import signal
    import subprocess
    import sys
    import time

    out = run_dir / "checkpoints" / "twice"
    args = [sys.executable, "-m", "granite_cli", "pretrain", "--run-dir", str(run_dir), "-o", str(out), "--steps", "400",
            *map(str, FAST)]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = out.with_name(".twice.lock")
    deadline = time.time() + 60
    while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
        assert time.time() < deadline and first.poll() is None
        time.sleep(0.05)
    second = granite("pretrain", "--run-dir", run_dir, "-o", out, "--steps", "400", *FAST, "--overwrite")
    assert second.returncode == 2 and f"another run (pid {first.pid})" in second.stderr.decode()
    first.send_signal(signal.SIGKILL)  # a killed holder leaves no stuck lock
    first.wait()
    third = granite("pretrain", "--run-dir", run_dir, "-o", out, "--steps", "2", *FAST, "--overwrite")
    assert third.returncode == 0, third.stderr.decode()


def test_token_ids_beyond_the_vocabulary_are_bad_input_not_an_index_error(run_dir, tmp_path):
    import numpy as np

    shards = tmp_path / "shards"
    shutil.copytree(run_dir / "shards" / "phase-1", shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    tokens = shards / "shard-00000.tokens"
    data = np.fromfile(tokens, dtype=manifest["dtype"])
    data[::97] = np.iinfo(data.dtype).max  # ids no tokenizer of this vocabulary makes
    data.tofile(tokens)
    result = granite("pretrain", shards, "--run-dir", run_dir, "-o", tmp_path / "ckpt", *FAST)
    err = result.stderr.decode()
    assert result.returncode == 2 and "beyond the vocabulary" in err and "Traceback" not in err


@pytest.mark.parametrize("kernel, message", [("liger", "--loss-kernel liger"), ("fused", "one of chunked, liger")])
def test_a_loss_kernel_this_machine_cannot_run_is_refused_before_training(run_dir, kernel, message):
    out = run_dir / "checkpoints" / f"kernel-{kernel}"
    result = granite("pretrain", "--run-dir", run_dir, "-o", out, "--steps", "2", *FAST, "--loss-kernel", kernel)
    assert result.returncode == 2 and message in result.stderr.decode() and "Traceback" not in result.stderr.decode()
    assert not out.exists()


def test_a_loss_chunk_size_below_one_is_refused(run_dir):
    refused = granite("pretrain", "--run-dir", run_dir, "-o", run_dir / "checkpoints" / "chunk-0", *FAST,
                      "--loss-chunk-tokens", "0")
    assert refused.returncode == 2 and "--loss-chunk-tokens" in refused.stderr.decode()
    assert "Traceback" not in refused.stderr.decode() and not (run_dir / "checkpoints" / "chunk-0").exists()


def test_a_profiled_run_writes_where_the_time_went_and_trains_the_same(run_dir):
    plain, profiled = run_dir / "checkpoints" / "unprofiled", run_dir / "checkpoints" / "profiled"
    granite("pretrain", "--run-dir", run_dir, "-o", plain, "--steps", "4", *FAST, check=True)
    result = granite("pretrain", "--run-dir", run_dir, "-o", profiled, "--steps", "4", *FAST, "--profile", "2:3", check=True)
    assert "where a step's time goes (steps 2-3" in result.stderr.decode()
    a, b = weights(plain), weights(profiled)
    assert all(torch.equal(a[name], b[name]) for name in a)  # profiling observes; it does not change the run

    written = run_dir / "checkpoints" / "profiled.profile"
    assert not (profiled / "rank-0.summary.json").exists()  # beside the checkpoint, not in what is shared
    summary = json.loads((written / "rank-0.summary.json").read_text())
    assert summary["steps"] == [2, 3]
    regions = summary["regions_seconds"]
    assert all(regions[name] > 0 for name in ("batch", "forward", "backward", "optimizer"))
    assert sum(regions.values()) == pytest.approx(summary["step_seconds"], rel=1e-6)
    families = summary["families_seconds"]
    assert families["matmul"] > 0 and families["attention"] > 0 and families["loss head"] > 0
    assert sum(families.values()) == pytest.approx(summary["operator_seconds"], rel=1e-6)
    assert summary["top"][0]["seconds"] >= summary["top"][-1]["seconds"] > 0
    trace = json.loads((written / "rank-0.trace.json").read_text())
    marked = {event.get("name") for event in trace["traceEvents"]}
    assert {"granite: forward", "granite: backward", "granite: optimizer"} <= marked


def test_a_profile_outside_the_run_is_refused_before_training(run_dir):
    out = run_dir / "checkpoints" / "profile-late"
    result = granite("pretrain", "--run-dir", run_dir, "-o", out, "--steps", "4", *FAST, "--profile", "3:9")
    err = result.stderr.decode()
    assert result.returncode == 2 and "the run has 4 steps" in err and "Traceback" not in err
    assert not out.exists() and not out.with_name("profile-late.profile").exists()
