import json
import random

import numpy as np
import orjson
import pytest
import zstandard

from conftest import REPO, granite
from granite_cli.data.records import read_records
from granite_cli.data.shards import ShardSet
from granite_cli.data.tokenizer_io import load_tokenizer, tokenizer_identity
from stages.tokenize import write_shards

PRETRAIN = sorted((REPO / "examples" / "data" / "pretrain").glob("*.jsonl.zst"))


def sample_documents(per_source=15, seed=0):
    """A few documents of every bundled source (long ones cut, to keep the test fast)."""
    rng = random.Random(seed)
    docs = []
    for path in PRETRAIN:
        found = list(read_records([str(path)]))
        for doc in rng.sample(found, min(per_source, len(found))):
            docs.append({"id": doc["id"], "text": doc["text"][:20000], "source": doc["source"]})
    return docs


def write_jsonl(path, docs):
    path.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    return path


def test_trained_tokenizer_loads_in_plain_transformers(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert tok.eos_token == tok.bos_token == "<|end_of_text|>"
    assert len(tok) == 2048
    assert (tokenizer_dir / "chat_template.jinja").exists()
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == "<|start_of_role|>user<|end_of_role|>hi<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>"


def test_the_tokenizer_loads_as_autotokenizer_loads_it_without_importing_torch(tokenizer_dir, checkpoint, tmp_path):
    # load_tokenizer imports the class the directory names instead of asking AutoTokenizer, which imports torch
    import subprocess
    import sys

    from transformers import AutoTokenizer

    text = "The <|end_of_text|> café costs 3.50\n\tdef f(x): return x"
    for directory in (tokenizer_dir, checkpoint):
        ours, auto = load_tokenizer(str(directory)), AutoTokenizer.from_pretrained(str(directory))
        assert type(ours) is type(auto)
        assert tokenizer_identity(ours, str(directory)) == tokenizer_identity(auto, str(directory))
        assert ours.encode(text, add_special_tokens=False) == auto.encode(text, add_special_tokens=False)
        assert ours.all_special_ids == auto.all_special_ids and ours.pad_token_id == auto.pad_token_id
        assert ours.chat_template == auto.chat_template
    write_jsonl(tmp_path / "docs.jsonl", sample_documents(per_source=1))
    code = ("import sys; from granite_cli.app import main; sys.argv = ['granite', 'tokenize', sys.argv[1], '-t', sys.argv[2], "
            "'-o', sys.argv[3]]\ntry: main()\nexcept SystemExit as end: assert not end.code, end.code\n"
            "sys.exit('torch' in sys.modules)")
    ran = subprocess.run([sys.executable, "-c", code, tmp_path / "docs.jsonl", tokenizer_dir, tmp_path / "shards"],
                         capture_output=True)
    assert ran.returncode == 0, ran.stderr.decode()[-2000:]
    assert (tmp_path / "shards" / "manifest.json").exists()


def test_decode_of_tokenize_is_the_text_on_the_bundled_data(tokenizer_dir, tmp_path):
    docs = sample_documents()
    out = tmp_path / "shards"
    granite("tokenize", write_jsonl(tmp_path / "docs.jsonl", docs), "--tokenizer", tokenizer_dir, "-o", out,
            "--shard-tokens", "50K", check=True)
    shards = ShardSet(out)
    tok = load_tokenizer(str(tokenizer_dir))
    decoded = []
    for number in range(len(shards.shards)):
        for doc in range(len(shards.ends(number))):
            ids = shards.document(number, doc)
            assert ids[-1] == tok.eos_token_id
            decoded.append(tok.decode(ids[:-1].tolist(), skip_special_tokens=False))
    assert decoded == [d["text"] for d in docs]
    assert len(shards.shards) > 1 and shards.dtype == np.uint16
    assert shards.manifest["documents"] == len(docs)
    assert set(shards.manifest["sources"]) == {d["source"] for d in docs}
    assert shards.verify() == []


def test_manifest_records_identity_and_counts(tokenizer_dir, tmp_path):
    docs = sample_documents(per_source=2)
    out = tmp_path / "s"
    granite("tokenize", write_jsonl(tmp_path / "d.jsonl", docs), "-t", tokenizer_dir, "-o", out, check=True)
    manifest = json.loads((out / "manifest.json").read_text())
    identity = tokenizer_identity(load_tokenizer(str(tokenizer_dir)), str(tokenizer_dir))
    assert manifest["tokenizer"]["sha256"] == identity["sha256"] and manifest["eos_id"] == identity["eos_id"]
    assert manifest["tokens"] == sum(s["tokens"] for s in manifest["shards"]) == \
        sum(v["tokens"] for v in manifest["sources"].values())
    assert "tokenize" in " ".join(manifest["command"])


def test_inspect_verifies_and_detects_corruption(tokenizer_dir, tmp_path):
    docs = sample_documents(per_source=2)
    out = tmp_path / "s"
    granite("tokenize", write_jsonl(tmp_path / "d.jsonl", docs), "-t", tokenizer_dir, "-o", out, check=True)
    ok = granite("tokenize", "inspect", out)
    assert ok.returncode == 0 and "match the manifest" in ok.stderr.decode()
    tokens_file = out / "shard-00000.tokens"
    data = bytearray(tokens_file.read_bytes())
    data[10] ^= 0xFF
    tokens_file.write_bytes(bytes(data))
    bad = granite("tokenize", "inspect", out)
    assert bad.returncode == 1 and "checksum does not match" in bad.stderr.decode()


class Interrupt(Exception):
    pass


def interrupted_after(docs, n):
    for i, doc in enumerate(docs):
        if i == n:
            raise Interrupt()
        yield doc


def test_resumed_run_writes_the_same_bytes_as_an_uninterrupted_one(tokenizer_dir, tmp_path):
    docs = sample_documents(per_source=10)
    tok = load_tokenizer(str(tokenizer_dir))
    identity = tokenizer_identity(tok, str(tokenizer_dir))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    write_shards(iter(docs), tok, identity, straight, shard_tokens=20_000, batch_docs=16)
    with pytest.raises(Interrupt):
        write_shards(interrupted_after(iter(docs), 90), tok, identity, resumed, shard_tokens=20_000, batch_docs=16)
    assert not resumed.exists() and (tmp_path / ".resumed.partial" / "progress.json").exists()
    write_shards(iter(docs), tok, identity, resumed, shard_tokens=20_000, batch_docs=16)
    names = sorted(p.name for p in straight.iterdir())
    assert names == sorted(p.name for p in resumed.iterdir())
    for name in names:
        if name != "manifest.json":
            assert (straight / name).read_bytes() == (resumed / name).read_bytes(), name
    assert json.loads((straight / "manifest.json").read_text())["shards"] == \
        json.loads((resumed / "manifest.json").read_text())["shards"]


def test_resume_refuses_a_different_input(tokenizer_dir, tmp_path):
    docs = sample_documents(per_source=10)
    tok = load_tokenizer(str(tokenizer_dir))
    identity = tokenizer_identity(tok, str(tokenizer_dir))
    with pytest.raises(Interrupt):
        write_shards(interrupted_after(iter(docs), 90), tok, identity, tmp_path / "o", shard_tokens=20_000, batch_docs=16)
    from granite_cli.errors import BadInput

    with pytest.raises(BadInput, match="differs"):
        write_shards(iter(list(reversed(docs))), tok, identity, tmp_path / "o", shard_tokens=20_000, batch_docs=16)


def test_bare_pipe_uses_the_run_directory(tokenizer_dir, tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    run = tmp_path / "run"
    shutil.copytree(tokenizer_dir, run / "tokenizer")
    granite_cmd = f"{sys.executable} -m granite_cli"
    # a wide console: rich wraps long paths at the terminal width, which the temporary directory's name would decide
    proc = subprocess.run(f"{granite_cmd} mix --phase 4 --run-dir {run} | {granite_cmd} tokenize --run-dir {run}",
                          shell=True, capture_output=True, env={**os.environ, "COLUMNS": "400"})
    assert proc.returncode == 0, proc.stderr.decode()
    assert "shards/phase-4" in proc.stderr.decode()
    assert ShardSet(run / "shards" / "phase-4").verify() == []


def test_existing_output_is_not_overwritten_without_flag(tokenizer_dir, tmp_path):
    docs = write_jsonl(tmp_path / "d.jsonl", sample_documents(per_source=1))
    granite("tokenize", docs, "-t", tokenizer_dir, "-o", tmp_path / "s", check=True)
    again = granite("tokenize", docs, "-t", tokenizer_dir, "-o", tmp_path / "s")
    assert again.returncode == 2 and "--overwrite" in again.stderr.decode()
    assert granite("tokenize", docs, "-t", tokenizer_dir, "-o", tmp_path / "s", "--overwrite").returncode == 0


def test_zstd_input(tokenizer_dir, tmp_path):
    docs = sample_documents(per_source=1)
    path = tmp_path / "d.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b"".join(orjson.dumps(d) + b"\n" for d in docs)))
    granite("tokenize", path, "-t", tokenizer_dir, "-o", tmp_path / "s", check=True)
    assert ShardSet(tmp_path / "s").manifest["documents"] == len(docs)


def tokenize_workers(inputs, tokenizer_dir, run_dir, count):
    """Run `count` tokenize workers over the inputs; each one's result and, where it wrote one, its shard set."""
    results = [granite("tokenize", *inputs, "-t", tokenizer_dir, "--phase", "7", "--run-dir", run_dir,
                       "--shard-index", index, "--num-shards", count) for index in range(count)]
    shards = [run_dir / "shards" / "phase-7" / f"part-{i:05d}" for i in range(count)]
    return results, [ShardSet(s) if r.returncode == 0 else None for r, s in zip(results, shards)]


def test_job_array_workers_split_files_and_write_their_own_parts(tokenizer_dir, tmp_path):
    docs = sample_documents(per_source=2)
    plain = write_jsonl(tmp_path / "d.jsonl", docs)  # split into byte ranges
    compressed = []  # more files than workers: dealt out whole
    for i in range(4):
        compressed.append(tmp_path / f"c{i}.jsonl.zst")
        compressed[-1].write_bytes(zstandard.ZstdCompressor().compress(b"".join(orjson.dumps(d) + b"\n" for d in docs[i::4])))
    for inputs, run_dir in (([plain], tmp_path / "plain"), (compressed, tmp_path / "compressed")):
        results, parts = tokenize_workers(inputs, tokenizer_dir, run_dir, 2)
        assert all(r.returncode == 0 for r in results), [r.stderr.decode() for r in results]
        counts = [p.manifest["documents"] for p in parts]
        assert sum(counts) == len(docs) and min(counts) > 0, counts


def test_a_worker_whose_part_holds_no_document_says_so(tokenizer_dir, tmp_path):
    one = write_jsonl(tmp_path / "one.jsonl", sample_documents(per_source=1)[:1])  # a single line: worker 1 gets none
    results, parts = tokenize_workers([one], tokenizer_dir, tmp_path / "run", 2)
    assert results[0].returncode == 0 and parts[0].manifest["documents"] == 1
    assert results[1].returncode == 2 and "no documents in worker 1 of 2's part of the input" in results[1].stderr.decode()


def test_a_worker_parses_only_its_own_part_of_the_input(tokenizer_dir, tmp_path):
    """A malformed line stops the one worker whose part holds it; the others never parse it, so they finish."""
    docs = sample_documents(per_source=2)
    lines = [orjson.dumps(d) + b"\n" for d in docs]
    bad = len(lines) - 2  # 0-based: in the last of two byte ranges, and one worker's every third line
    lines[bad] = b'{"id": "broken", "text": \n'
    plain = tmp_path / "d.jsonl"
    plain.write_bytes(b"".join(lines))
    assert len(b"".join(lines[:bad])) >= plain.stat().st_size // 2  # the bad line begins in worker 1's range
    results, _ = tokenize_workers([plain], tokenizer_dir, tmp_path / "plain", 2)
    assert results[0].returncode == 0 and results[1].returncode == 2
    assert f"{plain}[bytes {plain.stat().st_size // 2}:{plain.stat().st_size}]:" in results[1].stderr.decode()
    one = tmp_path / "d.jsonl.zst"  # fewer compressed files than workers: every third line each
    one.write_bytes(zstandard.ZstdCompressor().compress(b"".join(lines)))
    results, parts = tokenize_workers([one], tokenizer_dir, tmp_path / "strided", 3)
    assert [r.returncode for r in results] == [2 if i == bad % 3 else 0 for i in range(3)]
    assert f"{one}:{bad + 1}: malformed JSON" in results[bad % 3].stderr.decode()
    assert sum(p.manifest["documents"] for p in parts if p) == len([i for i in range(len(lines)) if i % 3 != bad % 3])


def test_a_long_document_is_encoded_in_pieces_with_the_ids_of_encoding_it_whole(tokenizer_dir):
    from stages.tokenize import encode_texts, pieces_for_encoding

    backend = load_tokenizer(str(tokenizer_dir)).backend_tokenizer
    parts = ["def f(x):\n\treturn x ** 2  # square\n\n", "Café naïve façade — 12345678 km/h.\r\n", "    indented   spaces\t\t",
             "日本語のテキスト、句読点。", "'s 're don't (parens) [brackets] {braces}\n\n\n", "x" * 37, " 3.14159 ", "\n"]
    text = "".join(parts[i % len(parts)] for i in range(3000))
    pieces = pieces_for_encoding(backend, text, piece_chars=1000)
    assert len(pieces) > 50 and "".join(pieces) == text
    whole = backend.encode(text, add_special_tokens=False).ids
    assert list(encode_texts(backend, [text], piece_chars=1000)[0]) == whole
    assert encode_texts(backend, ["short", text], piece_chars=1000)[0] == backend.encode("short", add_special_tokens=False).ids


def test_tokenizer_training_keeps_one_input_open_at_a_time(tmp_path):
    """Each input is read up to its byte budget and closed before the next opens: with many inputs, open files (or
    zstd processes) do not pile up to the process's limit."""
    import os

    from granite_cli.data.records import ErrorPolicy
    from stages.tokenize import training_texts

    inputs = []
    for i in range(8):
        path = tmp_path / f"part-{i}.jsonl.zst"
        path.write_bytes(zstandard.ZstdCompressor().compress(b"".join(
            orjson.dumps({"id": f"{i}-{j}", "text": "word " * 50}) + b"\n" for j in range(200))))
        inputs.append(str(path))
    baseline = len(os.listdir("/proc/self/fd"))
    most = 0
    for n, _ in enumerate(training_texts(inputs, None, 1000, ErrorPolicy())):
        most = max(most, len(os.listdir("/proc/self/fd")) - baseline)
    assert n + 1 == 8 * 4  # 1,000 bytes of each input: four 250-byte texts
    assert most <= 3  # one reader: a file, or a zstd process's two pipes (and listdir's own descriptor)
