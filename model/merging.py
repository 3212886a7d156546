"""Merging checkpoints of one architecture, tensor by tensor (phase 5 merges each extended model with its parent).

    merge_states([parent, extended], "linear", [0.15, 0.85]) -> state dict

- linear: the weighted average of every tensor (weights sum to 1). Merging a model with itself returns it
  bitwise: the average of equal tensors is computed as the first plus weighted differences, which are 0.
- slerp: spherical interpolation between two models, per tensor (the way mergekit does it): the angle between the
  flattened tensors, and linear interpolation where they are nearly parallel. `weights` = [w, 1 - w]: w is the
  first model's share, as in linear, so t = 1 - w moves from the first model (t = 0) to the second.

- ties, dare_ties, dare_linear: task-vector merges run by mergekit (LGPL-3.0, an optional dependency:
  `pip install mergekit`). The first model is the base; each other model adds its weight times its task vector (its
  difference from the base), trimmed to its largest `density` share (TIES) or randomly dropped and rescaled (DARE),
  with TIES's sign election; `normalize` off, so two models at density 1 give the linear merge.
"""

from __future__ import annotations

from pathlib import Path

from granite_cli.errors import BadInput

METHODS = ("linear", "slerp")
MERGEKIT_METHODS = ("ties", "dare_ties", "dare_linear")
PARALLEL = 0.9995  # cosine above which slerp falls back to linear interpolation (mergekit's DOT_THRESHOLD)


def merge_states(states: list[dict], method: str, weights: list[float]) -> dict:
    """One state dict from several with the same names and shapes (checked by the caller)."""
    if method not in METHODS:
        raise ValueError(f"merge method must be one of {', '.join(METHODS)}")
    if len(weights) != len(states) or abs(sum(weights) - 1) > 1e-6:
        raise ValueError("one weight per model, summing to 1")
    if method == "slerp" and len(states) != 2:
        raise ValueError("slerp merges exactly two models")
    merge = _linear if method == "linear" else _slerp
    return {name: merge([state[name] for state in states], weights) for name in states[0]}


def _linear(tensors, weights):
    import torch

    first = tensors[0]
    if not first.is_floating_point():
        return first.clone()
    base = first.float()
    total = base.clone()
    for tensor, weight in zip(tensors[1:], weights[1:]):
        difference = tensor.float() - base
        if torch.any(difference):
            total.add_(difference, alpha=weight)
    return total.to(first.dtype)


def _slerp(tensors, weights):
    import torch

    a, b = tensors
    if not a.is_floating_point():
        return a.clone()
    t = weights[1]
    if torch.equal(a, b) or t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    x, y = a.double().flatten(), b.double().flatten()
    cosine = torch.dot(x / (x.norm() + 1e-12), y / (y.norm() + 1e-12)).clamp(-1.0, 1.0)
    if abs(float(cosine)) > PARALLEL:
        mixed = (1 - t) * x + t * y
    else:
        omega = torch.arccos(cosine)
        mixed = (torch.sin((1 - t) * omega) * x + torch.sin(t * omega) * y) / torch.sin(omega)
    return mixed.view(a.shape).to(a.dtype)


def read_state(directory: Path) -> dict:
    """A checkpoint's tensors by name (tied embeddings stored once, as transformers stores them)."""
    from safetensors.torch import load_file

    from model.checkpoint import check_weights

    check_weights(Path(directory))
    return load_file(str(Path(directory) / "model.safetensors"))


def compatible(directories: list[Path]) -> list[dict]:
    """The checkpoints' states, after checking they can be merged: the same tensor names and shapes and the same
    tokenizer (ids must mean the same tokens). Anything else is bad input (exit 2), naming what differs."""
    from granite_cli.data.tokenizer_io import load_tokenizer, tokenizer_identity

    states = [read_state(d) for d in directories]
    first = states[0]
    for directory, state in zip(directories[1:], states[1:]):
        if state.keys() != first.keys():
            extra = sorted(set(state) ^ set(first))[:3]
            raise BadInput(f"not the same architecture as {directories[0]}: tensors {', '.join(extra)} differ", str(directory))
        shapes = [n for n in first if first[n].shape != state[n].shape]
        if shapes:
            raise BadInput(f"tensor {shapes[0]} is {tuple(state[shapes[0]].shape)} here but "
                           f"{tuple(first[shapes[0]].shape)} in {directories[0]}", str(directory))
    identities = [tokenizer_identity(load_tokenizer(str(d)), str(d))["sha256"] for d in directories]
    for directory, identity in zip(directories[1:], identities[1:]):
        if identity != identities[0]:
            raise BadInput(f"another tokenizer than {directories[0]}'s: token ids would not mean the same tokens", str(directory))
    return states


def parents_entry(directories: list[Path], method: str, weights: list[float], extra: dict | None = None) -> dict:
    """The lineage entry of a merge: every parent by path and weights digest, with its own last stage."""
    import hashlib

    from model.checkpoint import lineage_entry, read_lineage

    parents = [{"path": str(Path(d).resolve()), "weight": w,
                "sha256": hashlib.sha256((Path(d) / "model.safetensors").read_bytes()).hexdigest(),
                "last_stage": (read_lineage(d) or [{}])[-1].get("stage")} for d, w in zip(directories, weights)]
    return lineage_entry("merge", {"method": method, "weights": weights, **(extra or {})},
                         [{"path": p["path"], "sha256": p["sha256"]} for p in parents], {"parents": parents})


def merged_state(directories: list[Path], states: list[dict], method: str, weights: list[float], density: float = 1.0) -> dict:
    """The merged tensors: linear and SLERP here, the task-vector methods through mergekit."""
    if method in METHODS:
        return merge_states(states, method, weights)
    if method not in MERGEKIT_METHODS:
        raise BadInput(f"merge method must be one of {', '.join(METHODS + MERGEKIT_METHODS)}")
    return mergekit_state(directories, method, weights[1:], density)


def mergekit_state(directories: list[Path], method: str, weights: list[float], density: float) -> dict:
    import tempfile

    from safetensors.torch import load_file

    try:
        from mergekit.config import MergeConfiguration
        from mergekit.merge import MergeOptions, run_merge
    except ImportError:
        raise BadInput(f"merge method {method!r} runs on mergekit, which is not installed: `pip install mergekit` "
                       f"(LGPL-3.0), or use linear or slerp") from None
    config = MergeConfiguration.model_validate({
        "merge_method": method, "base_model": str(directories[0]), "dtype": "float32", "parameters": {"normalize": False},
        "models": [{"model": str(d), "parameters": {"weight": w, "density": density}} for d, w in zip(directories[1:], weights)]})
    with tempfile.TemporaryDirectory() as out:
        run_merge(config, out_path=out, options=MergeOptions(copy_tokenizer=False, lazy_unpickle=False, cuda=False,
                                                             random_seed=0, quiet=True))
        merged = {}
        for shard in sorted(Path(out).glob("*.safetensors")):
            merged.update(load_file(str(shard)))
    return merged
