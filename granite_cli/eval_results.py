"""The eval results document (docs/design.md, contract 6): `RESULTS/results.json` and `samples.jsonl`.

`granite eval` writes one per evaluation; `granite rl` writes its per-domain held-out rewards as one too, so that
`granite eval table` shows them beside the benchmarks in the row of the same stage.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from granite_cli.data.atomic import atomic_path


def write_results(out: Path, model: str, stage: str, results: dict, samples: list[dict]) -> None:
    """results.json ({model, stage, created, command, tasks}) and samples.jsonl (one row per item), each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    document = {"model": model, "stage": stage, "created": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "command": sys.argv, "tasks": results}
    with atomic_path(out / "samples.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(s) + "\n" for s in samples))
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(document, indent=2))
