"""Recipe files: the declaration of a training run (sources, phases, mixtures, schedules).

A recipe is TOML. The packaged ones (`granite-4.1`, `tiny`) live in granite_cli/recipes/; any
other path is a user's file. Loading parses units and resolves paths; `problems()` lists every
inconsistency at once so `granite recipe check` can report them together.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from dataclasses import dataclass, field
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


@dataclass
class Source:
    """A named pre-training source: local file globs or a cached Hugging Face dataset."""

    name: str
    paths: list[str] = field(default_factory=list)
    hf: str | None = None
    hf_split: str = "train"
    text_field: str = "text"
    max_repetition: float = 1.0
    description: str = ""

    def files(self) -> list[str]:
        """Every local file the globs match, sorted so that the order never depends on the filesystem."""
        found: list[str] = []
        for pattern in self.paths:
            found.extend(sorted(glob.glob(pattern, recursive=True)))
        return found


@dataclass
class Phase:
    number: int
    name: str
    tokens: int
    mixture: dict[str, float] | str
    schedule: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    unpublished: list[str] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)  # phase 5: the long-context stages


@dataclass
class Recipe:
    name: str
    path: Path
    description: str
    run_dir: Path
    bytes_per_token: float
    mix_tolerance: float
    heldout_fraction: float
    tokenizer: dict
    sources: dict[str, Source]
    phases: dict[int, Phase]
    raw: dict

    @property
    def paths(self) -> RunDir:
        """Where each stage's default inputs and outputs live (granite_cli/rundir.py)."""
        return RunDir(self.run_dir)

    def phase(self, number: int) -> Phase:
        if number not in self.phases:
            known = ", ".join(str(n) for n in sorted(self.phases))
            raise BadInput(f"recipe {self.name!r} has no phase {number} (phases: {known})")
        return self.phases[number]

    def mixture(self, number: int) -> dict[str, float]:
        """The phase's mixture in percent, following a reference such as "phase-4"."""
        mixture = self.phase(number).mixture
        seen = {number}
        while isinstance(mixture, str):
            target = _phase_reference(mixture)
            if target in seen or target not in self.phases:
                raise BadInput(f"recipe {self.name!r}: phase {number} mixture refers to {mixture!r}, which does not resolve")
            seen.add(target)
            mixture = self.phases[target].mixture
        return mixture

    def problems(self, check_data: bool = True) -> list[str]:
        """Every inconsistency in the recipe, as readable sentences (empty when the recipe is sound)."""
        found: list[str] = []
        if not self.phases:
            found.append("the recipe declares no phases")
        for number, phase in sorted(self.phases.items()):
            try:
                mixture = self.mixture(number)
            except BadInput as err:
                found.append(str(err))
                continue
            total = sum(mixture.values())
            if abs(total - 100.0) > MIXTURE_SUM_TOLERANCE:
                found.append(f"phase {number} ({phase.name}): mixture sums to {total:g}%, not 100%")
            for source, share in mixture.items():
                if source not in self.sources:
                    found.append(f"phase {number} ({phase.name}): source {source!r} is not declared under [sources]")
                if share <= 0:
                    found.append(f"phase {number} ({phase.name}): source {source!r} has a share of {share:g}%")
            for stage in phase.stages:
                if isinstance(stage.get("mixture"), dict):
                    stage_total = sum(stage["mixture"].values())
                    if abs(stage_total - 100.0) > MIXTURE_SUM_TOLERANCE:
                        found.append(f"phase {number} stage {stage.get('name')}: mixture sums to {stage_total:g}%")
                    for source in stage["mixture"]:
                        if source not in self.sources:
                            found.append(f"phase {number} stage {stage.get('name')}: source {source!r} is not declared")
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
        for source in self.tokenizer.get("train_sources", []):
            if source not in self.sources:
                found.append(f"tokenizer.train_sources: {source!r} is not declared under [sources]")
        return found


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


def load_recipe(name_or_path: str | None = None, run_dir: str | None = None) -> Recipe:
    """Load and parse a recipe; unit and type errors are reported together as one BadInput."""
    path = resolve_recipe_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise BadInput(f"not valid TOML: {err}", str(path)) from err
    errors: list[str] = []

    def count(value, what):
        try:
            return parse_count(value, what)
        except BadInput as err:
            errors.append(str(err))
            return 0

    base = path.parent
    sources = {}
    for name, spec in raw.get("sources", {}).items():
        sources[name] = Source(
            name=name,
            paths=[expand_path(p, base) for p in spec.get("paths", [])],
            hf=spec.get("hf"),
            hf_split=spec.get("split", "train"),
            text_field=spec.get("text_field", "text"),
            max_repetition=float(spec.get("max_repetition", raw.get("max_repetition", 1.0))),
            description=spec.get("description", ""),
        )
    phases = {}
    for spec in raw.get("phases", []):
        number = spec.get("number")
        if not isinstance(number, int):
            errors.append(f"every [[phases]] entry needs an integer `number` (got {number!r})")
            continue
        stages = [dict(stage, tokens=count(stage.get("tokens", 0), f"phase {number} stage tokens"),
                       length=count(stage.get("length", 0), f"phase {number} stage length"))
                  for stage in spec.get("stages", [])]
        mixture = spec.get("mixture", {})
        if isinstance(mixture, dict):
            mixture = {k: float(v) for k, v in mixture.items()}
        phases[number] = Phase(
            number=number,
            name=spec.get("name", f"phase {number}"),
            tokens=count(spec.get("tokens", 0), f"phase {number} tokens"),
            mixture=mixture,
            schedule=spec.get("schedule", {}),
            training=spec.get("training", {}),
            unpublished=list(spec.get("unpublished", [])),
            stages=stages,
        )
    if errors:
        raise BadInput("; ".join(errors), str(path))
    name = raw.get("name", path.stem)
    return Recipe(
        name=name,
        path=path,
        description=raw.get("description", ""),
        run_dir=Path(run_dir or raw.get("run_dir") or f"runs/{name}"),
        bytes_per_token=float(raw.get("bytes_per_token", 4.0)),
        mix_tolerance=float(raw.get("mix_tolerance", 0.5)),
        heldout_fraction=float(raw.get("heldout_fraction", 0.0)),
        tokenizer=raw.get("tokenizer", {}),
        sources=sources,
        phases=phases,
        raw=raw,
    )


def expand_path(pattern: str, base: Path) -> str:
    """Expand {examples} and $VARS; a relative path is relative to the recipe file."""
    pattern = os.path.expandvars(pattern.replace("{examples}", str(examples_dir())))
    if not os.path.isabs(pattern) and "$" not in pattern:
        pattern = str(base / pattern)
    return pattern
