"""Build the bundled sample data in examples/data/ (run once by a maintainer; the output is committed).

    python examples/build_data.py            # needs python3.11-doc and manpages-fr/-de/-es installed

Real text comes from gather_text.py; everything else from the seeded generators in generators/.
The held-out split: a task is held out when a hash of its prompt (or of its `subject`, where the generator
names one) falls in the held-out bucket, so the split is stable across runs and disjoint from training by
construction (tests check it again).
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import sys
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).parent))
import gather_text  # noqa: E402
from generators import chat, tasks  # noqa: E402

OUT = Path(__file__).parent / "data"
SEED = 4_1_2026
HELDOUT_PER_FAMILY = 40
LICENSES = {}


def is_heldout(prompt: str) -> bool:
    return int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 8 == 0


def write(relpath: str, records: list[dict], origin: str, license_: str) -> None:
    if not records:  # a missing Debian package yields no text, and an empty file would pass for data
        sys.exit(f"build_data: no records for {relpath} ({origin}); install its source and rerun")
    path = OUT / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = b"".join(json.dumps(r, ensure_ascii=False, sort_keys=False).encode() + b"\n" for r in records)
    path.write_bytes(zstandard.ZstdCompressor(level=19).compress(raw))
    LICENSES[relpath] = (origin, license_, len(records), len(raw), path.stat().st_size)
    print(f"{relpath}: {len(records)} records, {len(raw) / 1e6:.2f} MB raw", file=sys.stderr)


def task_pool(rng: random.Random, per_family: int) -> tuple[dict[str, list], dict[str, list]]:
    """Unique tasks per family, split into train and held-out by prompt hash."""
    train, heldout = {}, {}
    for family, generate in tasks.FAMILIES.items():
        seen, train[family], heldout[family] = set(), [], []
        for _ in range(per_family * 4):
            task = generate(rng)
            if task["prompt"] in seen:
                continue
            seen.add(task["prompt"])
            # a task whose prompts differ only in a rule or two names its subject: all its wordings fall on one
            # side, or the filter's 8-gram decontamination finds held-out prompts inside training ones
            bucket = heldout[family] if is_heldout(task.get("subject", task["prompt"])) else train[family]
            bucket.append(task)
            if len(train[family]) >= per_family and len(heldout[family]) >= HELDOUT_PER_FAMILY:
                break
        heldout[family] = heldout[family][:HELDOUT_PER_FAMILY]
    return train, heldout


def with_ids(records: list[dict], prefix: str) -> list[dict]:
    return [{"id": f"{prefix}-{i:05d}", **r} for i, r in enumerate(records)]


def text_doc(source: str, text: str) -> dict:
    return {"text": text, "source": source, "origin": "examples/generators", "license": "Apache-2.0"}


def pretrain_synthetic(train: dict[str, list], rng: random.Random) -> dict[str, list[dict]]:
    math = [text_doc("math", f"Problem: {t['prompt']}\nSolution: {' '.join(t['steps'])}\nAnswer: {t['answer']}")
            for family in ("arithmetic", "word_problem", "arithmetic_rule", "science") for t in train[family]]
    long_cot = []
    for family, items in train.items():
        for t in items:
            check = f"Let me check the result once more: {t['answer']} is consistent with every step above."
            long_cot.append(text_doc("long-cot", f"Question: {t['prompt']}\n<think>\nLet me work through this step by step.\n"
                                                 + "\n".join(t["steps"]) + f"\n{check}\n</think>\nFinal answer: {t['answer']}"))
    language = [text_doc("language-instructions", f"### Instruction\n{t['prompt']}\n### Response\n{chat.answer_text(t)}")
                for family in ("instruction_following", "structured_output", "temporal", "ordering", "string", "in_context")
                for t in train[family]]
    synthetic = [text_doc("synthetic", number_facts(n)) for n in rng.sample(range(2, 100000), 3000)]
    for docs in (math, long_cot, language, synthetic):
        rng.shuffle(docs)
    return {"math": math, "long-cot": long_cot, "language-instructions": language, "synthetic": synthetic}


def number_facts(n: int) -> str:
    """A short textbook-style paragraph about one integer: synthetic, varied and always true."""
    divisors = [d for d in range(1, n + 1) if n % d == 0] if n < 5000 else [1, n]
    kind = "prime" if len(divisors) == 2 and n < 5000 else ("composite" if n < 5000 else "large")
    parts = [f"The number {n} is {'even' if n % 2 == 0 else 'odd'}.", f"Its square is {n * n} and its double is {2 * n}.",
             f"In binary it is written {bin(n)[2:]}, and in hexadecimal {hex(n)[2:]}.",
             f"The sum of its digits is {sum(int(c) for c in str(n))}."]
    if kind != "large":
        parts.append(f"It is a {kind} number" + (f" with divisors {', '.join(map(str, divisors))}." if kind == "composite" else "."))
    return " ".join(parts)


def code_instructions() -> list[dict]:
    """Instruction -> implementation pairs from documented stdlib functions."""
    docs = []
    for path in sorted(gather_text.STDLIB.glob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and ast.get_docstring(node) and not node.name.startswith("_"):
                code = ast.get_source_segment(source, node)
                if code and 200 < len(code) < 3000:
                    summary = ast.get_docstring(node).strip().split("\n\n")[0]
                    docs.append({"text": f"### Instruction\nWrite a Python function `{node.name}` ({path.stem} module). "
                                         f"{summary}\n### Response\n```python\n{code}\n```",
                                 "source": "code-instructions", "origin": f"cpython-3.11/{path.name}", "license": "PSF-2.0"})
    return docs


def chat_samples(train: dict[str, list], rng: random.Random) -> list[dict]:
    samples = [chat.task_sample(t, rng) for family in train for t in train[family][:120]]
    flat = [t for family in train for t in train[family][120:]]
    rng.shuffle(flat)
    samples += [chat.multi_turn_sample(flat[i], flat[i + 1], rng) for i in range(0, 300, 2)]
    samples += [chat.tool_call_sample(rng) for _ in range(300)]
    samples += [chat.tool_irrelevance_sample(t, rng) for t in flat[300:360]]
    samples += [chat.rag_sample(rng) for _ in range(250)]
    samples += [chat.with_answer(chat.identity_prompt(rng), chat.IDENTITY_ANSWER) for _ in range(40)]
    samples += [chat.with_answer(chat.calibration_prompt(rng), chat.ABSTAIN_ANSWER) for _ in range(40)]
    rng.shuffle(samples)
    defective = [chat.add_defect(s, rng) for s in rng.sample(samples, len(samples) // 20)]
    duplicates = [json.loads(json.dumps(s)) for s in rng.sample(samples, 20)]
    for d in duplicates:
        d.setdefault("meta", {})["defect"] = "duplicate"
    samples += defective + duplicates
    rng.shuffle(samples)
    return samples


def preference_pairs(train: dict[str, list], rng: random.Random) -> list[dict]:
    pairs = []
    for family in ("arithmetic", "word_problem", "science", "temporal", "ordering"):
        for t in train[family][:60]:
            wrong = chat.answer_text(t).replace(f"The answer is {t['answer']}", f"The answer is {t['answer']}0")
            pairs.append({"messages": [{"role": "user", "content": t["prompt"]}],
                          "chosen": {"role": "assistant", "content": chat.answer_text(t)},
                          "rejected": {"role": "assistant", "content": wrong}, "source": f"task/{family}"})
    for _ in range(60):
        p = chat.identity_prompt(rng)
        pairs.append({"messages": p["messages"], "chosen": {"role": "assistant", "content": chat.IDENTITY_ANSWER},
                      "rejected": {"role": "assistant", "content": "I am ChatGPT, made by OpenAI."}, "source": "identity"})
    rng.shuffle(pairs)
    # chat pairs (what the RLHF stage's reward model judges) from a generator of their own, so adding them
    # changed nothing else in the data: two pairs for each of the chat prompts
    chat_rng = random.Random(SEED + 2)
    pairs += [chat.chat_preference_pair(template, topic, chat_rng)
              for template in chat.CHAT_TEMPLATES for topic in tasks.TOPICS for _ in range(2)]
    return pairs


RL_STAGE1_DOMAINS = {"math": ["arithmetic", "word_problem", "arithmetic_rule"], "science": ["science"],
                     "logic": ["ordering", "string"], "instruction_following": ["instruction_following"],
                     "structured_output": ["structured_output"],
                     "text_to_sql": ["text_to_sql"], "temporal": ["temporal"], "in_context_learning": ["in_context"]}


# stage 1 takes the last 100 training tasks of a family; instruction following, whose format rules are what a
# tiny model can learn from a verifier (README, rl), three times as many
RL_STAGE1_PER_FAMILY = {"instruction_following": 300}


def rl_sets(train: dict[str, list], rng: random.Random) -> dict[str, list[dict]]:
    multi = [chat.rl_prompt(t, rng) for families in RL_STAGE1_DOMAINS.values() for f in families
             for t in train[f][-RL_STAGE1_PER_FAMILY.get(f, 100):]]
    multi += [chat.chat_prompt(rng) for _ in range(100)]
    rng.shuffle(multi)
    math = [chat.rl_prompt(t, rng) for f in RL_STAGE1_DOMAINS["math"] for t in train[f][-200:]]
    rng.shuffle(math)
    identity = [chat.identity_prompt(rng) for _ in range(60)] + [chat.calibration_prompt(rng) for _ in range(60)]
    rng.shuffle(identity)
    rlhf = [chat.chat_prompt(rng) for _ in range(200)]
    # the identity questions of the sft data are few; phrasings it never uses follow them (no random draw: nothing
    # else in the data moved when they were added), and give the identity stage held-out questions
    identity += [chat.identity_paraphrase_prompt(q) for q in chat.IDENTITY_PARAPHRASES for _ in range(2)]
    return {"rl/multi-domain": multi, "rl/rlhf": rlhf, "rl/identity": identity, "rl/math": math}


def heldout_records(heldout: dict[str, list]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": t["prompt"]}], "answer": t["answer"],
             "response": chat.answer_text(t), "family": family,
             "domain": t["domain"], "verifier": t["verifier"], "source": f"heldout/{family}"}
            for family, items in heldout.items() for t in items]


def main() -> None:
    rng = random.Random(SEED)
    train, heldout = task_pool(rng, per_family=700)
    pydoc = "python3.11-doc (Debian), reST sources"
    write("pretrain/commoncrawl.jsonl.zst", with_ids(list(gather_text.pydoc_pages(
        ["library", "c-api", "whatsnew", "using", "installing", "distributing", "extending", "faq"], "commoncrawl")), "web"),
        pydoc, "PSF-2.0")
    write("pretrain/commoncrawl-hq.jsonl.zst", with_ids(list(gather_text.pydoc_pages(["tutorial", "howto"], "commoncrawl-hq")), "webhq"),
          pydoc, "PSF-2.0")
    write("pretrain/technical.jsonl.zst", with_ids(list(gather_text.pydoc_pages(["reference", "glossary.rst.txt"], "technical")), "tech"),
          pydoc, "PSF-2.0")
    write("pretrain/code.jsonl.zst", with_ids(list(gather_text.stdlib_modules(4_000_000)), "code"), "CPython 3.11 standard library", "PSF-2.0")
    write("pretrain/code-repositories.jsonl.zst", with_ids(list(gather_text.stdlib_repositories()), "repo"),
          "CPython 3.11 standard library packages, file by file", "PSF-2.0")
    write("pretrain/books.jsonl.zst", with_ids(list(gather_text.pydoc_books()), "book"), pydoc + ", whole sections", "PSF-2.0")
    write("pretrain/domain.jsonl.zst", with_ids(list(gather_text.licence_texts()), "legal"),
          "/usr/share/common-licenses (Debian base-files)", "verbatim copying permitted by each licence")
    write("pretrain/multilingual.jsonl.zst", with_ids(list(gather_text.man_pages(["fr", "de", "es"], 60)), "ml"),
          "manpages-fr/-de/-es (Debian), rendered by man", "GPL-3.0-or-later")
    for name, docs in pretrain_synthetic(train, rng).items():
        write(f"pretrain/{name}.jsonl.zst", with_ids(docs, name), "examples/generators (seeded)", "Apache-2.0")
    write("pretrain/code-instructions.jsonl.zst", with_ids(code_instructions(), "codeinst"),
          "documented functions of the CPython 3.11 standard library", "PSF-2.0")
    write("chat/sft.jsonl.zst", with_ids(chat_samples(train, rng), "sft"), "examples/generators (seeded)", "Apache-2.0")
    write("chat/preference.jsonl.zst", with_ids(preference_pairs(train, rng), "pref"), "examples/generators (seeded)", "Apache-2.0")
    for name, records in rl_sets(train, rng).items():
        write(f"{name}.jsonl.zst", with_ids(records, name.split("/")[1]), "examples/generators (seeded)", "Apache-2.0")
    write("eval/heldout.jsonl.zst", with_ids(heldout_records(heldout), "heldout"), "examples/generators (seeded), held-out bucket", "Apache-2.0")
    write_sources_md()


def write_sources_md() -> None:
    lines = ["# Bundled sample data", "", "Made by `python examples/build_data.py` (seeded; see that file). "
             "Sizes are uncompressed JSONL / compressed.", "",
             "| file | origin | licence | records | raw MB | zst MB |", "|---|---|---|---|---|---|"]
    for rel, (origin, license_, n, raw, packed) in sorted(LICENSES.items()):
        lines.append(f"| {rel} | {origin} | {license_} | {n} | {raw / 1e6:.2f} | {packed / 1e6:.2f} |")
    (OUT / "SOURCES.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
