"""Recipe files: the declaration of a training run (sources, phases, mixtures, schedules, stages).

A recipe is TOML. The packaged ones (`granite-4.1`, `tiny`) live in granite_cli/recipes/; any
other path is a user's file. Every table is a dataclass below, each field with its default and what
it means; loading parses units, resolves paths and refuses a key no table has (naming it and the
file), so a typo never passes silently. `problems()` lists every inconsistency between tables at
once, so `granite recipe check` can report them together.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from granite_cli.errors import BadInput
from granite_cli.rundir import RunDir

PACKAGED_DIR = Path(__file__).parent / "recipes"
DEFAULT_RECIPE = "tiny"
MIXTURE_SUM_TOLERANCE = 0.05  # percent; IBM's published phase-3 shares (3 x 16.67 ...) sum to 100.01
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_BINARY_UNITS = {"K": 2**10, "M": 2**20, "B": 2**30, "G": 2**30, "T": 2**40}
_COUNT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMBGT]?)\s*$", re.IGNORECASE)


def parse_count(value: int | float | str, what: str = "count") -> int:
    """Parse a token or byte count: 4096, "32K", "4M", "500B", "0.4T"."""
    if isinstance(value, bool):
        raise BadInput(f"{what}: expected a number like 4M or 10T, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise BadInput(f"{what}: must not be negative, got {value}")
        return int(value)
    match = _COUNT.match(str(value))
    if not match:
        raise BadInput(f"{what}: cannot parse {value!r} (expected a number with an optional K, M, B or T)")
    number, unit = match.groups()
    return int(round(float(number) * _UNITS[unit.upper()]))


def format_count(n: int) -> str:
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def examples_dir() -> Path:
    """The bundled sample data: $GRANITE_EXAMPLES, else examples/ beside the package (source checkout)."""
    return Path(os.environ.get("GRANITE_EXAMPLES", Path(__file__).resolve().parent.parent / "examples"))


def _count(value, where: str) -> int:
    return parse_count(value, where)


def _length(value, where: str) -> int:
    """A context length: 4096, or "32K" meaning 32 x 1024 (context lengths are powers of two, token budgets are not)."""
    match = _COUNT.match(str(value)) if isinstance(value, str) else None
    if match and match.group(2):
        number, unit = match.groups()
        return int(round(float(number) * _BINARY_UNITS[unit.upper()]))
    return parse_count(value, where)


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadInput(f"{where}: expected a number, got {value!r}")
    return float(value)


def _integer(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{where}: expected an integer, got {value!r}")
    return value


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise BadInput(f"{where}: expected a string, got {value!r}")
    return value


def _flag(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise BadInput(f"{where}: expected true or false, got {value!r}")
    return value


def _texts(value, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadInput(f"{where}: expected a list of strings, got {value!r}")
    return list(value)


def _pair(value, where: str) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise BadInput(f"{where}: expected two numbers like [0.9, 0.95], got {value!r}")
    return (_number(value[0], where), _number(value[1], where))


def _mixture(value, where: str) -> dict[str, float] | str:
    """Shares in percent by source name, or a reference to another phase's mixture ("phase-4")."""
    if isinstance(value, str):
        _phase_reference(value)
        return value
    if not isinstance(value, dict):
        raise BadInput(f"{where}: expected a table of source shares or a reference like 'phase-4', got {value!r}")
    return {name: _number(share, f"{where}.{name}") for name, share in value.items()}


def _table(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise BadInput(f"{where}: expected a table, got {value!r}")
    return dict(value)


def spec(default, parse, help: str):
    """A recipe field: its default, the parser of its TOML value, and what it means (shown by `granite recipe keys`)."""
    factory = {"default_factory": lambda: type(default)(default)} if isinstance(default, (list, dict)) else {"default": default}
    return field(metadata={"parse": parse, "help": help}, **factory)


def required(parse, help: str):
    """A field the table must give (`build` says so when it is missing)."""
    return field(default=None, metadata={"parse": parse, "help": help, "required": True})


@dataclass
class ModelSection:
    """[model]: the model a fresh pre-training run builds."""

    preset: str = spec("tiny-2m", _text, "model preset for a fresh start (model/presets.py); `granite pretrain --preset` wins")


@dataclass
class TokenizerSection:
    """[tokenizer]: what `granite tokenize train` trains (or which released tokenizer the recipe expects)."""

    name: str = spec("granite-bpe", _text, "the tokenizer's name, saved with it")
    vocab_size: int = spec(0, _count, "entries of the trained vocabulary (0: `--vocab-size` must say)")
    train_sources: list = spec([], _texts, "sources whose text trains the tokenizer (empty: every source)")
    train_bytes_per_source: int = spec(0, _count, "bytes read from each source for training (0: all)")


@dataclass
class Source:
    """[sources.NAME]: a named pre-training source: local file globs or a cached Hugging Face dataset."""

    name: str
    paths: list = spec([], _texts, "file globs ({examples} and $VARS expand; relative to the recipe file)")
    hf: str | None = spec(None, _text, "a Hugging Face dataset name read from the local cache")
    split: str = spec("train", _text, "the dataset split (with hf)")
    text_field: str = spec("text", _text, "the field holding the document text")
    max_repetition: float = spec(1.0, _number, "how many times the source may be repeated to meet its share")
    description: str = spec("", _text, "what the source holds")

    def files(self) -> list[str]:
        """Every local file the globs match, sorted so that the order never depends on the filesystem."""
        found: list[str] = []
        for pattern in self.paths:
            found.extend(sorted(glob.glob(pattern, recursive=True)))
        return found


@dataclass
class Training:
    """[phases.training]: a pre-training phase's batch shape and optimizer settings (AdamW)."""

    seq_len: int = spec(4096, _length, "training sequence length in tokens (IBM: 4K before phase 5)")
    batch_tokens: int = spec(4_000_000, _count, "tokens per optimizer step (the global batch)")
    weight_decay: float = spec(0.1, _number, "AdamW weight decay of the projection weights")
    betas: tuple = spec((0.9, 0.95), _pair, "AdamW betas")
    grad_clip: float = spec(1.0, _number, "gradient-norm clipping (0: none)")


@dataclass
class ContextStage:
    """[[phases.stages]]: one step of the long-context extension (phase 5)."""

    name: str = required(_text, "the stage's name (`granite mix --phase 5 --stage NAME`)")
    length: int = required(_length, "the context length the stage trains at (32K = 32768 tokens)")
    tokens: int = required(_count, "the stage's token budget")
    mixture: dict | str = spec("phase-4", _mixture, "the stage's mixture, or a reference to a phase's")
    rope_theta: float | None = spec(None, _number, "RoPE theta at this length (unset: extend-context's documented rule)")
    sizes: list = spec([], _texts, "model sizes that run this stage (empty: all), e.g. ['8b', '30b'] for 512K; matched "
                                   "against the end of [model] preset")


@dataclass
class Merge:
    """[phases.merge]: how each extended model is merged with its parent (phase 5)."""

    method: str = spec("linear", _text, "linear, slerp, ... (IBM unpublished; a related IBM paper used linear)")
    base_weight: float = spec(0.15, _number, "the parent's weight in the merge (15% parent + 85% extended)")


@dataclass
class Phase:
    """[[phases]]: one pre-training phase."""

    number: int = required(_integer, "the phase number (1-5); each phase starts from the previous one's weights")
    name: str = spec("", _text, "what the phase is for")
    tokens: int = spec(0, _count, "the phase's token budget")
    mixture: dict | str = spec({}, _mixture, "shares in percent by source, or a reference like 'phase-4'")
    schedule: dict = spec({}, _table, "the LR schedule: name, peak_lr, warmup and the schedule's constants")
    training: Training = spec(None, None, "batch shape and optimizer settings")
    unpublished: list = spec([], _texts, "which values are granite's defaults where IBM published none")
    stages: list = spec([], None, "phase 5: the long-context stages, in order")
    merge: Merge | None = spec(None, None, "phase 5: merging each stage's result with its parent")

    def stage(self, name: str) -> ContextStage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        known = ", ".join(s.name for s in self.stages) or "none"
        raise BadInput(f"phase {self.number} has no stage {name!r} (stages: {known})")


@dataclass
class SFTSection:
    """[sft]: supervised fine-tuning; the defaults are IBM's published settings (docs/recipe.md)."""

    epochs: float = spec(3.0, _number, "passes over the training split (IBM: 3)")
    lr: float = spec(5e-6, _number, "peak learning rate (IBM: 5e-6)")
    warmup: str = spec("3%", lambda v, w: str(v), "linear warmup, tokens or a percentage (IBM: 3%), then linear decay to 0")
    seq_len: int = spec(16384, _length, "packed sequence length (IBM: 16K)")
    batch_sequences: int = spec(256, _integer, "packed sequences per optimizer step (IBM: 256)")
    val_fraction: float = spec(0.02, _number, "share of samples held out for validation loss (unpublished)")
    weight_decay: float = spec(0.0, _number, "AdamW weight decay (unpublished)")
    betas: tuple = spec((0.9, 0.95), _pair, "AdamW betas (unpublished)")
    grad_clip: float = spec(1.0, _number, "gradient-norm clipping (unpublished)")


@dataclass
class FilterSection:
    """[filter]: SFT data curation, the judge's policy and each check's settings."""

    checks: list | None = spec(None, _texts, "checks to run (schema always runs); unset: all")
    accept_at: float = spec(4.0, _number, "weighted judge score at or above which a sample is accepted")
    reject_below: float = spec(3.0, _number, "weighted judge score below which a sample is rejected")
    borderline: str = spec("drop", _text, "keep or drop samples between the two thresholds")
    weights: dict = spec({}, _table, "the judge dimensions' weights (unset ones keep granite's defaults)")
    settings: dict = spec({}, _table, "[filter.settings.CHECK]: each check's settings")


@dataclass
class RLStage:
    """[[rl.stages]]: one of the four RL stages, run in order, each from the previous one's checkpoint."""

    number: int = required(_integer, "the stage number (1-4)")
    name: str = required(_text, "what the stage is called (multi-domain, rlhf, identity-calibration, math)")
    goal: str = spec("", _text, "what the stage is for")
    data: list = spec([], _texts, "prompt files (RL prompts: docs/design.md, contract 3)")
    reward: str = spec("verifiers", _text, "verifiers (each prompt's verifier record) or reward_model")
    lr: float = required(_number, "learning rate (docs/recipe.md: 5e-7 or 3e-7)")
    beta: float = required(_number, "KL coefficient to the stage's starting model (docs/recipe.md: 0.05 or 0.09)")
    steps: int = spec(0, _integer, "optimizer steps (0: one pass over the prompts)")


@dataclass
class RewardModelSection:
    """[rl.reward_model]: the Bradley-Terry reward model that scores the RLHF stage's chat answers (IBM: unpublished)."""

    data: list = spec([], _texts, "preference pairs (JSONL: messages, chosen, rejected)")
    epochs: float = spec(1.0, _number, "passes over the training pairs (one, as is usual for reward models)")
    lr: float = spec(1e-5, _number, "peak learning rate, linear warmup over 3% then linear decay (TRL's default)")
    pairs_per_step: int = spec(64, _integer, "preference pairs per optimizer step")
    seq_len: int = spec(8192, _length, "packed row length in tokens; a pair (chosen then rejected) shares one row")
    weight_decay: float = spec(0.0, _number, "AdamW weight decay (TRL's default)")
    betas: tuple = spec((0.9, 0.999), _pair, "AdamW betas (torch's default)")
    grad_clip: float = spec(1.0, _number, "gradient-norm clip")


@dataclass
class RLSection:
    """[rl]: on-policy GRPO with the DAPO loss, shared by the four stages (docs/recipe.md)."""

    samples_per_prompt: int = spec(16, _integer, "completions sampled per prompt, the group of GRPO (IBM: 16)")
    prompts_per_step: int = spec(64, _integer, "prompts per rollout batch (IBM: 64 x 16 = 1024 completions)")
    max_context: int = spec(8192, _length, "prompt plus completion, in tokens (IBM: 8K)")
    max_new_tokens: int = spec(0, _integer, "completion length cap (0: max_context minus the longest prompt; unpublished)")
    epsilon_low: float = spec(0.2, _number, "lower clip of the importance ratio (DAPO: 0.2)")
    epsilon_high: float = spec(0.28, _number, "upper clip, decoupled (DAPO: 0.28)")
    loss: str = spec("dapo", _text, "loss normalisation: dapo (token-level), grpo (per sequence) or dr_grpo")
    dynamic_sampling: bool = spec(False, _flag, "drop groups whose rewards are all equal and draw more (off: costly)")
    temperature: float = spec(1.0, _number, "rollout sampling temperature (unpublished)")
    top_p: float = spec(1.0, _number, "rollout nucleus sampling (unpublished)")
    heldout_fraction: float = spec(0.1, _number, "share of the prompts (by a hash of the prompt) held out to evaluate every stage")
    heldout_per_domain: int = spec(0, _integer, "held-out prompts per domain at most in each stage's evaluation (0: all)")
    regression_tolerance: float = spec(0.05, _number, "how far a domain's held-out reward may fall below its best "
                                       "earlier stage (beyond noise) before the stage reports a regression")
    weight_decay: float = spec(0.0, _number, "AdamW weight decay (unpublished; TRL's default)")
    betas: tuple = spec((0.9, 0.999), _pair, "AdamW betas (unpublished; torch's default)")
    grad_clip: float = spec(1.0, _number, "gradient-norm clip (unpublished)")
    stages: list = spec([], None, "the four stages, in order")
    reward_model: RewardModelSection | None = spec(None, None, "the reward model of the stages scored by one")


SECTIONS = {"model": ModelSection, "tokenizer": TokenizerSection, "sft": SFTSection, "filter": FilterSection}
# every table a recipe may hold, by its TOML header (what `granite recipe keys` documents)
TABLES = {"[model]": ModelSection, "[tokenizer]": TokenizerSection, "[sources.NAME]": Source, "[[phases]]": Phase,
          "[phases.training]": Training, "[[phases.stages]]": ContextStage, "[phases.merge]": Merge, "[sft]": SFTSection,
          "[filter]": FilterSection, "[rl]": RLSection, "[[rl.stages]]": RLStage,
          "[rl.reward_model]": RewardModelSection}
TOP_LEVEL = {"name": _text, "description": _text, "run_dir": _text, "bytes_per_token": _number, "mix_tolerance": _number,
             "heldout_fraction": _number, "max_repetition": _number}


def build(cls, table, where: str, errors: list[str], **given):
    """An instance of a recipe dataclass from its TOML table; every bad or unknown key is added to `errors`."""
    if not isinstance(table, dict):
        errors.append(f"{where}: expected a table, got {table!r}")
        table = {}
    known = {f.name: f for f in fields(cls) if f.name not in given}
    values = {}
    for key, value in table.items():
        if key not in known:
            errors.append(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
            continue
        parse = known[key].metadata.get("parse")
        if parse is None:
            continue  # a nested table: the caller builds it
        try:
            values[key] = parse(value, f"{where}.{key}")
        except BadInput as err:
            errors.append(str(err))
    missing = [name for name, f in known.items() if f.metadata.get("required") and name not in table]
    if missing:
        errors.append(f"{where}: missing {', '.join(repr(m) for m in missing)}")
        return None
    return cls(**given, **values)


@dataclass
class Recipe:
    name: str
    path: Path
    description: str
    run_dir: Path
    bytes_per_token: float
    mix_tolerance: float
    heldout_fraction: float
    model: ModelSection
    tokenizer: TokenizerSection
    sources: dict[str, Source]
    phases: dict[int, Phase]
    sft: SFTSection
    filter: FilterSection
    rl: RLSection

    @property
    def paths(self) -> RunDir:
        """Where each stage's default inputs and outputs live (granite_cli/rundir.py)."""
        return RunDir(self.run_dir)

    def phase(self, number: int) -> Phase:
        if number not in self.phases:
            known = ", ".join(str(n) for n in sorted(self.phases))
            raise BadInput(f"recipe {self.name!r} has no phase {number} (phases: {known})")
        return self.phases[number]

    def mixture(self, number: int, stage: str | None = None) -> dict[str, float]:
        """A phase's (or a phase-5 stage's) mixture in percent, following references such as "phase-4"."""
        mixture = self.phase(number).stage(stage).mixture if stage else self.phase(number).mixture
        seen = {number} if not stage else set()
        while isinstance(mixture, str):
            target = _phase_reference(mixture)
            if target in seen or target not in self.phases:
                raise BadInput(f"recipe {self.name!r}: phase {number}{f' stage {stage}' if stage else ''} mixture refers to "
                               f"{mixture!r}, which does not resolve")
            seen.add(target)
            mixture = self.phases[target].mixture
        return mixture

    def problems(self, check_data: bool = True) -> list[str]:
        """Every inconsistency in the recipe, as readable sentences (empty when the recipe is sound)."""
        found: list[str] = []
        if not self.phases:
            found.append("the recipe declares no phases")
        for number, phase in sorted(self.phases.items()):
            found += self._mixture_problems(f"phase {number} ({phase.name})", lambda: self.mixture(number))
            found += _schedule_problems(f"phase {number} ({phase.name})", phase.schedule)
            for stage in phase.stages:
                found += self._mixture_problems(f"phase {number} stage {stage.name}", lambda: self.mixture(number, stage.name))
        for source in self.sources.values():
            if not source.paths and not source.hf:
                found.append(f"source {source.name!r}: give `paths` (file globs) or `hf` (a dataset name)")
            if source.max_repetition < 1:
                found.append(f"source {source.name!r}: max_repetition must be >= 1, not {source.max_repetition:g}")
            unset = sorted(set(re.findall(r"\$\{?(\w+)", " ".join(source.paths))))
            if check_data and unset:
                found.append(f"source {source.name!r}: set the environment variable(s) {', '.join(unset)} (paths: {', '.join(source.paths)})")
            elif check_data and source.paths and not source.files():
                found.append(f"source {source.name!r}: no file matches {', '.join(source.paths)}")
        for source in self.tokenizer.train_sources:
            if source not in self.sources:
                found.append(f"tokenizer.train_sources: {source!r} is not declared under [sources]")
        if self.filter.borderline not in ("keep", "drop"):
            found.append(f"[filter] borderline must be keep or drop, not {self.filter.borderline!r}")
        if self.rl.loss not in ("dapo", "grpo", "dr_grpo"):
            found.append(f"[rl] loss must be dapo, grpo or dr_grpo, not {self.rl.loss!r}")
        numbers = [stage.number for stage in self.rl.stages]
        if numbers != sorted(set(numbers)):
            found.append(f"[[rl.stages]] numbers must rise without repeats (got {numbers})")
        for stage in self.rl.stages:
            if stage.reward not in ("verifiers", "reward_model"):
                found.append(f"rl stage {stage.number}: reward must be verifiers or reward_model, not {stage.reward!r}")
            missing = [path for path in stage.data if check_data and not glob.glob(path)]
            if missing:
                found.append(f"rl stage {stage.number}: no file matches {', '.join(missing)}")
        return found

    def _mixture_problems(self, where: str, resolve) -> list[str]:
        try:
            mixture = resolve()
        except BadInput as err:
            return [str(err)]
        found = []
        total = sum(mixture.values())
        if abs(total - 100.0) > MIXTURE_SUM_TOLERANCE:
            found.append(f"{where}: mixture sums to {total:g}%, not 100%")
        for source, share in mixture.items():
            if source not in self.sources:
                found.append(f"{where}: source {source!r} is not declared under [sources]")
            if share <= 0:
                found.append(f"{where}: source {source!r} has a share of {share:g}%")
        return found


def _schedule_problems(where: str, table: dict) -> list[str]:
    """A schedule table names a known schedule and only the constants that schedule takes."""
    import dataclasses

    from granite_cli.training.schedules import SCHEDULES

    name = table.get("name", "constant")
    if name not in SCHEDULES:
        return [f"{where}: unknown LR schedule {name!r} (known: {', '.join(SCHEDULES)})"]
    allowed = {f.name for f in dataclasses.fields(SCHEDULES[name])} | {"name", "warmup", "peak_lr", "unit"}
    return [f"{where}: schedule {name!r} takes no {key!r} (it takes: {', '.join(sorted(allowed - {'name'}))})"
            for key in table if key not in allowed]


def _phase_reference(text: str) -> int:
    match = re.fullmatch(r"phase-(\d+)", text.strip())
    if not match:
        raise BadInput(f"a mixture reference must look like 'phase-4', not {text!r}")
    return int(match.group(1))


def packaged_recipes() -> list[str]:
    return sorted(p.stem for p in PACKAGED_DIR.glob("*.toml"))


def resolve_recipe_path(name_or_path: str | None) -> Path:
    """A packaged recipe name (`tiny`, `granite-4.1`) or the path of a user's TOML file."""
    name_or_path = name_or_path or DEFAULT_RECIPE
    packaged = PACKAGED_DIR / f"{name_or_path}.toml"
    if packaged.exists():
        return packaged
    path = Path(name_or_path)
    if path.is_file():
        return path
    raise BadInput(
        f"no recipe {name_or_path!r}: not a packaged recipe ({', '.join(packaged_recipes())}) nor a file"
    )


def read_toml(path: Path, seen: tuple = ()) -> dict:
    """A recipe file's tables; `extends = "NAME or PATH"` starts from another recipe's tables and overrides them."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise BadInput(f"not valid TOML: {err}", str(path)) from err
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise BadInput(f"extends must be a recipe name or a path, not {parent!r}", str(path))
    relative = path.parent / parent
    base_path = relative if relative.is_file() else resolve_recipe_path(parent)
    if base_path.resolve() in seen:
        raise BadInput(f"recipes extend each other in a loop ({' -> '.join(str(p) for p in seen)})", str(path))
    return merged_tables(read_toml(base_path, seen + (path.resolve(),)), raw)


def runs_at_size(stage, model) -> bool:
    """A stage with `sizes` runs only for a model whose preset ends in one of them (granite-4.1-3b: "3b")."""
    if not stage.sizes or model is None or not model.preset:
        return True
    return model.preset.rsplit("-", 1)[-1].lower() in [size.lower() for size in stage.sizes]


def merged_tables(base, override):
    """`override` laid over `base`: tables merge key by key; arrays of tables whose entries all have a `number` (phases,
    rl stages) or a `name` (phase 5's stages) merge entry by entry, new entries appended; anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: merged_tables(base[k], v) if k in base else v for k, v in override.items()}}
    for key in ("number", "name"):
        if (isinstance(base, list) and isinstance(override, list) and base and override
                and all(isinstance(e, dict) and key in e for e in base + override)):
            by_key = {e[key]: e for e in base}
            out = [merged_tables(e, next((o for o in override if o[key] == e[key]), {})) for e in base]
            return out + [o for o in override if o[key] not in by_key]
    return override


def load_recipe(name_or_path: str | None = None, run_dir: str | None = None) -> Recipe:
    """Load and parse a recipe; every unit, type and unknown-key error is reported together as one BadInput."""
    path = resolve_recipe_path(name_or_path)
    raw = read_toml(path)
    errors: list[str] = []
    top = {}
    for key, value in raw.items():
        if key in TOP_LEVEL:
            try:
                top[key] = TOP_LEVEL[key](value, key)
            except BadInput as err:
                errors.append(str(err))
        elif key not in (*SECTIONS, "sources", "phases", "rl"):
            errors.append(f"unknown top-level key {key!r} (known: {', '.join(sorted([*TOP_LEVEL, *SECTIONS, 'sources', 'phases', 'rl']))})")
    sections = {name: build(cls, raw.get(name, {}), f"[{name}]", errors) for name, cls in SECTIONS.items()}
    base = path.parent
    default_repetition = top.get("max_repetition", 1.0)
    sources = {}
    for name, table in _table(raw.get("sources", {}), "[sources]").items():
        source = build(Source, {"max_repetition": default_repetition, **table}, f"[sources.{name}]", errors, name=name)
        if source is not None:
            source.paths = [expand_path(p, base) for p in source.paths]
            sources[name] = source
    phases = {}
    for table in raw.get("phases", []):
        phase = build(Phase, table, f"[[phases]] {table.get('number', '?')}", errors)
        if phase is None:
            continue
        where = f"phase {phase.number}"
        phase.training = build(Training, table.get("training", {}), f"[phases.training] of {where}", errors) or Training()
        phase.stages = [s for i, stage in enumerate(table.get("stages", []))
                        if (s := build(ContextStage, stage, f"[[phases.stages]] {i + 1} of {where}", errors))
                        and runs_at_size(s, sections["model"])]
        phase.merge = build(Merge, table["merge"], f"[phases.merge] of {where}", errors) if "merge" in table else None
        phases[phase.number] = phase
    rl_table = raw.get("rl", {})
    rl = build(RLSection, rl_table, "[rl]", errors) or RLSection()
    rl.stages = [s for i, stage in enumerate(rl_table.get("stages", []) if isinstance(rl_table, dict) else [])
                 if (s := build(RLStage, stage, f"[[rl.stages]] {i + 1}", errors))]
    for stage in rl.stages:
        stage.data = [expand_path(p, base) for p in stage.data]
    reward_table = rl_table.get("reward_model", {}) if isinstance(rl_table, dict) else {}
    rl.reward_model = build(RewardModelSection, reward_table, "[rl.reward_model]", errors) or RewardModelSection()
    rl.reward_model.data = [expand_path(p, base) for p in rl.reward_model.data]
    if errors:
        raise BadInput("; ".join(errors), str(path))
    name = top.get("name", path.stem)
    return Recipe(
        name=name, path=path, description=top.get("description", ""),
        run_dir=Path(run_dir or top.get("run_dir") or f"runs/{name}"),
        bytes_per_token=top.get("bytes_per_token", 4.0), mix_tolerance=top.get("mix_tolerance", 0.5),
        heldout_fraction=top.get("heldout_fraction", 0.0), model=sections["model"], tokenizer=sections["tokenizer"],
        sources=sources, phases=phases, sft=sections["sft"], filter=sections["filter"], rl=rl)


def expand_path(pattern: str, base: Path) -> str:
    """Expand {examples} and $VARS; a relative path is relative to the recipe file."""
    pattern = os.path.expandvars(pattern.replace("{examples}", str(examples_dir())))
    if not os.path.isabs(pattern) and "$" not in pattern:
        pattern = str(base / pattern)
    return pattern
