import json
import subprocess
import sys

import orjson
import pytest
import zstandard

from conftest import granite


def mix(*args, check=True):
    return granite("mix", *args, check=check)


def records(output: bytes):
    return [orjson.loads(line) for line in output.splitlines()]


@pytest.fixture(scope="module")
def phase4(tmp_path_factory):
    run = tmp_path_factory.mktemp("mixrun")
    return mix("--phase", "4", "--seed", "3", "--run-dir", run), run


def test_documents_follow_the_contract_and_go_to_stdout(phase4):
    result, _ = phase4
    docs = records(result.stdout)
    assert docs and all(isinstance(d["id"], str) and isinstance(d["text"], str) for d in docs)
    assert {d["source"] for d in docs} == {"commoncrawl-hq", "code", "math", "long-cot", "code-instructions",
                                           "language-instructions"}
    assert all(d["phase"] == 4 for d in docs)
    assert "achieved %" in result.stderr.decode()


def test_achieved_shares_are_within_the_recipe_tolerance(phase4, tmp_path):
    _, run = phase4
    mix("--phase", "4", "--seed", "3", "--run-dir", run, "-o", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "mix-00000-of-00001.json").read_text())
    for name, row in report["sources"].items():
        assert abs(row["achieved_pct"] - row["target_pct"]) <= 0.5, name


def test_same_seed_same_bytes_other_seed_other_order(phase4):
    first, run = phase4
    again = mix("--phase", "4", "--seed", "3", "--run-dir", run)
    other = mix("--phase", "4", "--seed", "4", "--run-dir", run)
    assert first.stdout == again.stdout
    assert first.stdout != other.stdout


def worker_outputs(out, count):
    parts = []
    for index in range(count):
        raw = zstandard.ZstdDecompressor().stream_reader(open(out / f"mix-{index:05d}-of-{count:05d}.jsonl.zst", "rb")).read()
        parts.append(records(raw))
    return parts


def union_shares(parts):
    tokens = {}
    for docs in parts:
        for d in docs:
            tokens[d["source"]] = tokens.get(d["source"], 0) + max(1, round(len(d["text"].encode()) / 4))
    total = sum(tokens.values())
    return {name: 100 * t / total for name, t in tokens.items()}


def test_job_array_workers_each_meet_the_shares_and_share_no_document(phase4, tmp_path):
    """The bundled sources are one .zst file each: fewer files than workers, so each worker keeps every third document."""
    _, run = phase4
    out = tmp_path / "parts"
    for index in range(3):
        granite("mix", "--phase", "4", "--seed", "3", "--run-dir", run, "--shard-index", index, "--num-shards", 3,
                "-o", out, check=True)
    parts = worker_outputs(out, 3)
    reports = [json.loads((out / f"mix-{i:05d}-of-00003.json").read_text()) for i in range(3)]
    for report in reports:
        for name, row in report["sources"].items():
            assert abs(row["achieved_pct"] - row["target_pct"]) <= 0.5, (report["shard_index"], name)
            assert all(p.endswith(f"[{report['shard_index']}::3]") for p in row["parts"])
    keys = [{(d["source"], d["id"]) for d in docs} for docs in parts]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    targets = reports[0]["sources"]
    for name, share in union_shares(parts).items():
        assert abs(share - targets[name]["target_pct"]) <= 0.5, name


def test_plain_files_are_split_into_byte_ranges_each_document_read_by_one_worker(tmp_path):
    from granite_cli.data.parts import worker_parts
    from granite_cli.data.records import ErrorPolicy
    from granite_cli.data.sources import read_part, source_units
    from granite_cli.recipe import load_recipe

    data = tmp_path / "data"
    data.mkdir()
    for name, count in (("web", 700), ("code", 300)):
        for f in range(2):
            with open(data / f"{name}-{f}.jsonl", "w") as out:
                for i in range(count):
                    out.write(json.dumps({"id": f"{name}-{f}-{i}", "text": f"{name} document {i} " * (1 + i % 9)}) + "\n")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[sources.web]\npaths = ["{data}/web-*.jsonl"]\n[sources.code]\npaths = ["{data}/code-*.jsonl"]\n'
                      '[[phases]]\nnumber = 1\ntokens = "40K"\n[phases.mixture]\nweb = 70\ncode = 30\n')
    source = load_recipe(str(recipe), str(tmp_path / "run")).sources["web"]
    seen = [[d["id"] for p in worker_parts(source_units(source), i, 3) for d, _ in read_part(p, source, ErrorPolicy())]
            for i in range(3)]
    everything = [json.loads(line)["id"] for f in sorted(data.glob("web-*.jsonl")) for line in f.read_text().splitlines()]
    assert sorted(sum(seen, [])) == sorted(everything)  # every document once: none lost, none read twice
    assert all(len(ids) > 300 for ids in seen)  # and each worker about a third
    out = tmp_path / "mix"
    for index in range(3):
        mix("--phase", "1", "--recipe", recipe, "--run-dir", tmp_path / "run", "--shard-index", index, "--num-shards", 3,
            "-o", out)
    parts = worker_outputs(out, 3)
    report = json.loads((out / "mix-00001-of-00003.json").read_text())
    assert all("[" in p and ":" in p for p in report["sources"]["web"]["parts"])  # byte ranges
    ids = [d["id"] for docs in parts for d in docs]
    assert len(ids) == len(set(ids))
    for name, share in union_shares(parts).items():
        assert abs(share - {"web": 70, "code": 30}[name]) <= 0.5, name


def test_short_source_errors_with_the_shortfall(tmp_path):
    result = mix("--phase", "1", "--tokens", "1T", "--run-dir", tmp_path, check=False)
    err = result.stderr.decode()
    assert result.returncode == 2
    assert "'commoncrawl' is short by" in err and "max_repetition" in err
    assert result.stdout == b""


def test_repetition_is_reported_and_marked(tmp_path):
    mix("--phase", "1", "--tokens", "3M", "--run-dir", tmp_path, "-o", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "mix-00000-of-00001.json").read_text())
    raw = zstandard.ZstdDecompressor().stream_reader(open(tmp_path / "out" / "mix-00000-of-00001.jsonl.zst", "rb")).read()
    repeated_sources = {d["source"] for d in records(raw) if d.get("repeat")}
    over_one_pass = {name for name, row in report["sources"].items() if row["repetitions"] > 1.0}
    assert repeated_sources and repeated_sources == over_one_pass


def test_dry_run_reads_no_data(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[sources.web]\npaths = ["/nonexistent/*.jsonl"]\n[[phases]]\nnumber = 1\ntokens = "1M"\n'
                      '[phases.mixture]\nweb = 100\n')
    result = mix("--phase", "1", "--recipe", recipe, "--dry-run")
    assert "mix plan" in result.stderr.decode() and result.stdout == b""


def test_unknown_phase_is_bad_usage(tmp_path):
    result = mix("--phase", "9", "--run-dir", tmp_path, check=False)
    assert result.returncode == 2 and "no phase 9" in result.stderr.decode()


def test_closed_pipe_ends_quietly(phase4):
    _, run = phase4
    proc = subprocess.run(f"{sys.executable} -m granite_cli mix --phase 4 --run-dir {run} | head -n 1; "
                          "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", capture_output=True)
    assert proc.returncode == 0  # mix's own status, not head's
    assert b"Traceback" not in proc.stderr and b"BrokenPipe" not in proc.stderr
    assert len(proc.stdout.splitlines()) == 1


def test_parquet_and_local_hf_dataset_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"doc_id": f"d{i}", "content": f"document number {i} " * 20} for i in range(200)]
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pq" / "part-0.parquet")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'''bytes_per_token = 4.0
[sources.local]
paths = ["pq/*.parquet"]
text_field = "content"
[sources.cached]
hf = "{tmp_path / 'pq'}"
text_field = "content"
[[phases]]
number = 1
tokens = "20K"
[phases.mixture]
local = 50
cached = 50
''')
    result = mix("--phase", "1", "--recipe", recipe, "--run-dir", tmp_path / "run")
    docs = records(result.stdout)
    assert {d["source"] for d in docs} == {"local", "cached"}
    assert all(d["text"].startswith("document number") and "content" not in d for d in docs)


def test_a_worker_converts_every_nth_row_of_a_parquet_file_or_dataset(tmp_path):
    """Rows are picked out of each Arrow batch before they become Python objects; batches of 1,024 rows do not line
    up with 3 workers, so the picking must follow the row's place in the whole file."""
    from dataclasses import replace

    import pyarrow as pa
    import pyarrow.parquet as pq

    from granite_cli.data.parts import worker_parts
    from granite_cli.data.records import ErrorPolicy
    from granite_cli.data.sources import read_part, source_units
    from granite_cli.errors import BadInput
    from granite_cli.recipe import load_recipe

    (tmp_path / "pq").mkdir()
    pq.write_table(pa.Table.from_pylist([{"doc_id": f"d{i}", "content": f"row {i}"} for i in range(2500)]),
                   tmp_path / "pq" / "part-0.parquet")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[sources.local]\npaths = ["{tmp_path}/pq/*.parquet"]\ntext_field = "content"\n'
                      f'[sources.cached]\nhf = "{tmp_path / "pq"}"\ntext_field = "content"\n'
                      '[[phases]]\nnumber = 1\ntokens = "1K"\n[phases.mixture]\nlocal = 50\ncached = 50\n')
    loaded = load_recipe(str(recipe), str(tmp_path / "run"))
    for source in loaded.sources.values():
        for index in range(3):
            texts = [d["text"] for p in worker_parts(source_units(source), index, 3)
                     for d, _ in read_part(p, source, ErrorPolicy())]
            assert texts == [f"row {i}" for i in range(index, 2500, 3)], (source.name, index)
    for source in loaded.sources.values():  # a text column that is not there is bad input, for both
        with pytest.raises(BadInput, match="no column 'body'"):
            next(read_part(worker_parts(source_units(source), 0, 1)[0], replace(source, text_field="body"), ErrorPolicy()))


def test_a_parquet_file_with_a_row_group_for_every_worker_is_dealt_out_by_row_group(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from granite_cli.data.parts import worker_parts
    from granite_cli.data.records import ErrorPolicy
    from granite_cli.data.sources import read_part
    from granite_cli.errors import BadInput
    from granite_cli.recipe import Source

    path = tmp_path / "data.parquet"  # 10 row groups of 250 rows
    pq.write_table(pa.Table.from_pylist([{"text": f"row {i}"} for i in range(2500)]), path, row_group_size=250)
    source = Source(name="local", paths=[str(path)])
    seen = []
    for index in range(3):
        (part,) = worker_parts([str(path)], index, 3)
        assert part.row_groups and part.key().endswith(f"[row groups {index}::3]")
        seen.append([d["text"] for d, _ in read_part(part, source, ErrorPolicy())])
        assert seen[-1] == [f"row {i}" for group in range(index, 10, 3) for i in range(250 * group, 250 * group + 250)]
    assert sorted(sum(seen, [])) == sorted(f"row {i}" for i in range(2500))
    path.write_bytes(b"not a Parquet file")  # bad input, whether its row groups are counted or it is read
    for count in (1, 3):
        with pytest.raises(BadInput, match="cannot read it as Parquet"):
            next(read_part(worker_parts([str(path)], 0, count)[0], source, ErrorPolicy()))


def test_heldout_split_is_disjoint_from_every_training_mix(phase4, tmp_path):
    _, run = phase4
    heldout = {(d["source"], d["id"]) for d in records(mix("--heldout", "--run-dir", run).stdout)}
    assert heldout and all(d["phase"] == "heldout" for d in records(mix("--heldout", "--phase", "4", "--run-dir", run).stdout))
    for phase in ("1", "4"):
        training = {(d["source"], d["id"]) for d in records(mix("--phase", phase, "--run-dir", run).stdout)}
        assert not heldout & training


def test_a_long_context_stage_mixes_its_own_mixture_and_budget(tmp_path):
    mix("--phase", "5", "--stage", "1K", "--seed", "1", "--run-dir", tmp_path, "-o", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "mix-00000-of-00001.json").read_text())
    assert report["stage"] == "1K" and report["budget_tokens"] == 160_000  # the tiny recipe's 1K stage, on the phase-4 mix
    assert {name: row["target_pct"] for name, row in report["sources"].items()} == pytest.approx(
        {"commoncrawl-hq": 40, "code": 20, "math": 20, "long-cot": 6, "code-instructions": 5, "language-instructions": 9})
    for name, row in report["sources"].items():
        assert abs(row["achieved_pct"] - row["target_pct"]) <= 0.5, name
    docs = records(zstandard.ZstdDecompressor().decompress((tmp_path / "out" / "mix-00000-of-00001.jsonl.zst").read_bytes(),
                                                           max_output_size=1 << 30))
    assert docs and all(d["phase"] == 5 and d["stage"] == "1K" for d in docs)
    plan = mix("--phase", "5", "--stage", "4K", "--dry-run", "--run-dir", tmp_path).stderr.decode()
    assert "books" in plan and "80.00" in plan and "code-repositories" in plan and "commoncrawl-hq" not in plan


def test_a_phase_with_stages_needs_one(tmp_path):
    result = mix("--phase", "5", "--run-dir", tmp_path, check=False)
    assert result.returncode == 2 and "1K, 2K, 4K" in result.stderr.decode()
    result = mix("--phase", "5", "--stage", "8K", "--run-dir", tmp_path, check=False)
    assert result.returncode == 2 and "no stage '8K'" in result.stderr.decode()


def test_a_mix_that_misses_its_tolerance_fails_unless_told_to_warn(tmp_path):
    """The tiny recipe's 4K stage at 40K tokens asks 80% books; each bundled book is far longer, so none fits."""
    out = tmp_path / "stage.jsonl"
    result = mix("--phase", "5", "--stage", "4K", "--tokens", "40K", "--run-dir", tmp_path, "-o", out, check=False)
    err = result.stderr.decode()
    assert result.returncode == 1 and "misses its tolerance" in err and "books 0.00% against 80.00%" in err
    assert not out.exists()
    warned = mix("--phase", "5", "--stage", "4K", "--tokens", "40K", "--run-dir", tmp_path, "-o", out, "--on-miss", "warn")
    assert "warning:" in warned.stderr.decode() and out.exists()


def test_a_record_without_the_keys_mix_sets_is_written_as_read_with_them_appended(tmp_path):
    # the raw-line path: a line is copied with source/phase appended, not parsed and serialised again; a record that
    # has one of those keys already, or whose text is under another field, is serialised with them set as before
    data = tmp_path / "data"
    data.mkdir()
    plain = ['{"id": "a", "text": "caf\\u00e9 au lait"}', '{"id":"b","text":"x y z","meta":{"n":1.50}}  ',
             '{"id": "c", "text": "tea"}\r']
    (data / "plain.jsonl").write_text("\n".join(plain) + "\n")
    (data / "tagged.jsonl").write_text('{"id": "d", "source": "books", "text": "an old source", "lang": "en"}\n')
    (data / "body.jsonl").write_text('{"id": "e", "body": "under another field"}\n')
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[sources.plain]\npaths = ["{data}/plain.jsonl"]\nmax_repetition = 3\n'
                      f'[sources.tagged]\npaths = ["{data}/tagged.jsonl"]\nmax_repetition = 3\n'
                      f'[sources.body]\npaths = ["{data}/body.jsonl"]\ntext_field = "body"\nmax_repetition = 3\n'
                      '[[phases]]\nnumber = 1\ntokens = 20\n[phases.mixture]\nplain = 50\ntagged = 25\nbody = 25\n')
    lines = mix("--phase", "1", "--recipe", recipe, "--run-dir", tmp_path / "run", "--on-miss", "warn").stdout.splitlines()
    by_id = {orjson.loads(line)["id"]: line for line in lines}
    assert set(by_id) == {"a", "b", "c", "d", "e"}
    for raw in plain:
        doc = orjson.loads(raw)
        line = by_id[doc["id"]]
        assert line.startswith(raw.rstrip()[:-1].encode())  # its bytes as read: spacing, the \u escape
        assert orjson.loads(line) == {**doc, "source": "plain", "phase": 1} | ({"repeat": 1} if b"repeat" in line else {})
    assert list(orjson.loads(by_id["d"])) == ["id", "source", "text", "lang", "phase"]  # replaced in place
    assert orjson.loads(by_id["d"])["source"] == "tagged"
    assert orjson.loads(by_id["e"])["text"] == "under another field" and "body" not in orjson.loads(by_id["e"])


def test_the_shuffle_draws_its_slots_as_randrange_does():
    # shuffle_buffer writes randrange's draw out for speed; the mix a seed gives must not change with it
    import random

    from stages.mix import shuffle_buffer

    def with_randrange(items, rng, size):
        buffer = []
        for item in items:
            if len(buffer) < size:
                buffer.append(item)
                continue
            slot = rng.randrange(size)
            yield buffer[slot]
            buffer[slot] = item
        rng.shuffle(buffer)
        yield from buffer

    for size in (1, 5, 1024):
        for count in (0, 3, 5000):
            assert list(shuffle_buffer(range(count), random.Random(7), size)) == list(with_randrange(range(count), random.Random(7), size))
