import os
from pathlib import Path

import pytest

import cli_process

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


def granite(*args, input=None, cwd=None, check=False):
    """Run the real CLI in a child process, so exit statuses and stdout/stderr separation are tested as users see them
    (forked with torch and transformers already imported: tests/cli_process.py)."""
    result = cli_process.run(list(map(str, args)), input, cwd, {**os.environ, "COLUMNS": "200"})
    if check and result.returncode != 0:
        raise AssertionError(f"granite {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr.decode()}")
    return result


def kill_after_first_checkpoint(args, workdir: Path, timeout: float = 120) -> None:
    """Run `granite ARGS` and SIGKILL it as soon as a step checkpoint is complete in `workdir` (a hard crash mid-run)."""
    import time

    proc = cli_process.start(list(map(str, args)), None, dict(os.environ), os.devnull, os.devnull, os.devnull)
    deadline = time.time() + timeout
    while not (workdir.exists() and any(d.name.startswith("step-") and (d / "lineage.json").exists()
                                        for d in workdir.iterdir())):  # not a checkpoint still being written
        assert proc.exitcode is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    proc.kill()  # SIGKILL
    proc.join()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A small BPE tokenizer trained on the bundled data (the tiny recipe's sources, 200 KB each)."""
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    granite("tokenize", "train", "--vocab-size", "2048", "--max-bytes", "200K", "-o", out,
            "--run-dir", out.parent / "run", check=True)
    return out


@pytest.fixture(scope="session")
def checkpoint(tokenizer_dir, tmp_path_factory):
    """An untrained depth-2 checkpoint: eval and the judge must run end to end whatever the model's quality."""
    import torch
    from transformers import GraniteForCausalLM

    from granite_cli.data.tokenizer_io import load_tokenizer
    from model.checkpoint import save_checkpoint
    from model.presets import build_config

    tok = load_tokenizer(str(tokenizer_dir))
    torch.manual_seed(0)
    config = build_config("depth-2", vocab_size=len(tok), bos_id=tok.eos_token_id, eos_id=tok.eos_token_id,
                          pad_id=tok.pad_token_id)
    out = tmp_path_factory.mktemp("untrained") / "ckpt"
    save_checkpoint(out, GraniteForCausalLM(config).state_dict(), config, tokenizer_dir,
                    [{"stage": "sft", "arguments": {}, "metrics": {}}])
    return out


def parse_cli(args: list[str]) -> None:
    """Parse a granite command line down to its subcommand without running it: unknown flags, flags missing a value
    and values of the wrong type raise (what `--help`-level validation of a script's commands needs)."""
    import typer

    from granite_cli.app import app

    def parse(command, words, parent=None):
        ctx = command.make_context(command.name or "granite", list(words), parent=parent)
        if hasattr(command, "resolve_command"):
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
            _, sub, rest = command.resolve_command(ctx, rest)
            parse(sub, rest, ctx)

    parse(typer.main.get_command(app), args)
