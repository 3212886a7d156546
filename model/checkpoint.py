"""Checkpoints (docs/design.md, contract 5): a Hugging Face model directory plus trainer state and lineage.

    CKPT/config.json, model.safetensors, generation_config.json   -> AutoModelForCausalLM
    CKPT/tokenizer.json, tokenizer_config.json, chat_template.jinja -> AutoTokenizer
    CKPT/trainer_state.pt   optimizer state, step, tokens, RNG states: what exact resume needs
    CKPT/lineage.json       every stage that produced this model: arguments, inputs, final metrics

Files are written into a temporary sibling directory that is renamed into place at the end, so a
directory under a checkpoint's name is always complete. `lineage.json` is read by `granite info`.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from granite_cli.data.atomic import atomic_directory
from granite_cli.errors import BadInput

TRAINER_STATE = "trainer_state.pt"
LINEAGE = "lineage.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def is_checkpoint(path: Path) -> bool:
    return (path / "config.json").exists() and (path / LINEAGE).exists()


def save_checkpoint(directory: Path, model_state: dict, config, tokenizer_dir: Path, lineage: list[dict],
                    trainer_state: dict | None = None) -> None:
    """Write a complete checkpoint atomically (temporary sibling, then rename)."""
    with atomic_directory(Path(directory)) as tmp:
        _write_checkpoint(tmp, model_state, config, tokenizer_dir, lineage, trainer_state)


def _write_checkpoint(tmp: Path, model_state: dict, config, tokenizer_dir: Path, lineage: list[dict],
                      trainer_state: dict | None) -> None:
    import torch
    from safetensors.torch import save_file

    # tied embeddings: store the shared tensor once, as transformers does
    tensors = {k: v.detach().contiguous().cpu() for k, v in model_state.items()
               if not (config.tie_word_embeddings and k == "lm_head.weight")}
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(tmp))
    _generation_config(config).save_pretrained(str(tmp))
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).exists():
            shutil.copy2(Path(tokenizer_dir) / name, tmp / name)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER_STATE)
    (tmp / LINEAGE).write_text(json.dumps(lineage, indent=2))


def _generation_config(config):
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                            pad_token_id=config.pad_token_id)


def check_weights(directory: Path) -> None:
    """The checkpoint's safetensors files are there and whole: each header parses and its tensors fit in the file.

    Reads only the headers, so `granite info` says a copy was cut short before anything loads it."""
    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise BadInput("no model weights (*.safetensors) in the checkpoint", str(directory))
    for path in files:
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                header_size = int.from_bytes(f.read(8), "little")
                if not 0 < header_size <= size - 8:
                    raise ValueError("the header is cut short")
                header = json.loads(f.read(header_size))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise BadInput(f"corrupt weights file ({err})", str(path)) from err
        if 8 + header_size + end > size:
            raise BadInput(f"truncated weights file: {size:,} bytes, its header needs {8 + header_size + end:,}", str(path))


def load_model(directory: Path, dtype=None, config=None):
    """The model of a checkpoint (ours or any local HF causal LM directory); `config` replaces its config.json (a
    stage that changes what the config builds, such as extend-context's RoPE)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    directory = Path(directory)
    if not (directory / "config.json").exists():
        raise BadInput("not a model checkpoint (no config.json)", str(directory))
    check_weights(directory)
    logging.disable_progress_bar()  # our progress goes through rich; a second bar only clutters stderr
    try:
        extra = {"config": config} if config is not None else {}
        return AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, local_files_only=True, **extra)
    except (OSError, ValueError, RuntimeError) as err:  # what transformers and safetensors raise for unreadable weights
        raise BadInput(f"cannot load the model: {err}", str(directory)) from err


def load_for_generation(directory: Path, device: str = "auto", dtype: str = "auto"):
    """(model, tokenizer, device) ready for batched generation: eval mode, bf16 on GPU (or as asked), left padding."""
    import torch

    from granite_cli.data.tokenizer_io import load_tokenizer

    chosen = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    torch_dtype = torch.bfloat16 if (dtype == "bf16" or (dtype == "auto" and chosen.type == "cuda")) else torch.float32
    model = load_model(Path(directory), dtype=torch_dtype).to(chosen).eval()
    tokenizer = load_tokenizer(str(directory))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, chosen


def read_lineage(directory: Path) -> list[dict]:
    """A checkpoint's lineage (empty where it has none); one that does not parse as a list of entries is bad input."""
    path = Path(directory) / LINEAGE
    if not path.exists():
        return []
    try:
        lineage = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInput(f"corrupt lineage ({err})", str(path)) from err
    if not isinstance(lineage, list) or not all(isinstance(entry, dict) for entry in lineage):
        raise BadInput("corrupt lineage: not a list of entries", str(path))
    return lineage


def stage_label(directory: Path) -> str:
    """What made a checkpoint, as `granite eval table` labels its rows: "pretrain phase 2", "sft", "rl stage 3",
    "extend-context phase 5 stage 4K merged" (a merge names the stage whose result it merged); the directory's
    name for a checkpoint without lineage."""
    lineage = read_lineage(Path(directory))
    trained = [entry for entry in lineage if entry.get("stage") != "merge"]
    if not trained:
        return Path(directory).name
    last = trained[-1]
    arguments = last.get("arguments", {})
    phase, stage = arguments.get("phase"), arguments.get("stage")
    return (f"{last['stage']}" + (f" phase {phase}" if phase is not None else "") + (f" stage {stage}" if stage is not None else "")
            + (" merged" if lineage[-1].get("stage") == "merge" else ""))


def lineage_entry(stage: str, arguments: dict, inputs: list[dict], metrics: dict) -> dict:
    return {"stage": stage, "arguments": arguments, "inputs": inputs, "metrics": metrics, "machine": machine(),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def machine() -> dict:
    """What a stage ran on, as far as it decides the last bits of the weights. The same inputs and seed give other bits
    under another torch, another GPU, or a CPU with another instruction set: MKL and ATen pick their kernels by it
    (phase 2 of the tiny recipe with AVX2 kernels forced on an AVX-512 machine: loss 4.235369 against 4.235370 at
    step 10), and a BLAS may tune its blocking to the caches. Two runs that differ can then be told apart by it."""
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": _cpu_name(), "cpu_caches": _caches(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    return info


def _cpu_name() -> str:
    """The CPU's model name with its family, model and stepping (Linux's /proc/cpuinfo: a virtual machine's name can be
    a generic one that the numbers tell apart), else what the platform says."""
    import platform

    try:
        first_cpu = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        first_cpu = ""
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first_cpu.splitlines())}
    if not fields.get("model name"):
        return platform.processor() or platform.machine()
    numbers = ", ".join(f"{name} {fields[key]}" for name, key in (("family", "cpu family"), ("model", "model"),
                                                                  ("stepping", "stepping")) if key in fields)
    return f"{fields['model name']} ({numbers})"


CACHE_KINDS = {"Data": "d", "Instruction": "i", "Unified": ""}


def _caches() -> str:
    """The first CPU's caches as Linux lists them ("L1d 48K, L1i 64K, L2 2048K, L3 491520K"), or "" where it does not."""
    caches = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        caches.append(f"L{level}{CACHE_KINDS.get(kind, '')} {size}")
    return ", ".join(caches)


def load_trainer_state(directory: Path) -> dict:
    import torch

    path = Path(directory) / TRAINER_STATE
    if not path.exists():
        raise BadInput("checkpoint has no trainer state to resume from", str(directory))
    return torch.load(path, map_location="cpu", weights_only=False)
