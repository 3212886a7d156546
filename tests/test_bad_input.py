"""Every kind of bad input gives one clear message naming the file (and line), exit 2, and no output."""

import gzip

import orjson
import pytest
import zstandard

from conftest import REPO, granite

GOOD = orjson.dumps({"id": "a", "text": "hello world", "source": "web"}) + b"\n"


@pytest.mark.parametrize("name, content, message", [
    ("malformed.jsonl", GOOD + b'{"id": "b", "text": \n', "malformed.jsonl:2: malformed JSON"),
    ("notext.jsonl", GOOD + b'{"id": "b", "source": "web"}\n', "notext.jsonl:2: record has no string 'text'"),
    ("utf8.jsonl", GOOD + b'{"id": "b", "text": "caf\xe9"}\n', "utf8.jsonl:2: invalid UTF-8"),
    ("array.jsonl", b'[1, 2]\n', "array.jsonl:1: a record must be a JSON object"),
])
def test_bad_record_names_file_and_line(tokenizer_dir, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    result = granite("tokenize", path, "-t", tokenizer_dir, "-o", tmp_path / "out")
    assert result.returncode == 2
    assert message in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()
    assert not (tmp_path / "out").exists()


def test_skip_counts_bad_records(tokenizer_dir, tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(GOOD + b"not json\n" + b'{"id": "x"}\n' + GOOD)
    result = granite("tokenize", path, "-t", tokenizer_dir, "-o", tmp_path / "out", "--on-error", "skip")
    assert result.returncode == 0
    err = result.stderr.decode()
    assert "skipped 2 bad record(s)" in err and "1 malformed JSON" in err and "1 no text" in err
    from granite_cli.data.shards import ShardSet

    assert ShardSet(tmp_path / "out").manifest["documents"] == 2


def test_empty_input(tokenizer_dir, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    result = granite("tokenize", path, "-t", tokenizer_dir, "-o", tmp_path / "out")
    assert result.returncode == 2 and "no documents" in result.stderr.decode()


def test_truncated_zstd(tokenizer_dir, tmp_path):
    whole = zstandard.ZstdCompressor().compress(GOOD * 2000)
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(whole[: len(whole) // 2])
    result = granite("tokenize", path, "-t", tokenizer_dir, "-o", tmp_path / "out")
    assert result.returncode == 2 and "cut.jsonl.zst" in result.stderr.decode() and "truncated" in result.stderr.decode()
    assert not (tmp_path / "out").exists()


def test_truncated_gzip(tokenizer_dir, tmp_path):
    whole = gzip.compress(GOOD * 2000)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    result = granite("tokenize", path, "-t", tokenizer_dir, "-o", tmp_path / "out")
    assert result.returncode == 2 and "cut.jsonl.gz" in result.stderr.decode()


def test_not_a_tokenizer(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(GOOD)
    result = granite("tokenize", path, "-t", tmp_path, "-o", tmp_path / "out")
    assert result.returncode == 2 and "not a tokenizer directory" in result.stderr.decode()


def test_missing_input_file(tokenizer_dir, tmp_path):
    result = granite("tokenize", tmp_path / "nope.jsonl", "-t", tokenizer_dir, "-o", tmp_path / "out")
    assert result.returncode == 2 and "nope.jsonl: no such file" in result.stderr.decode()


def test_unknown_source_in_a_mixture(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[sources.web]\npaths = ["x"]\n[[phases]]\nnumber = 1\ntokens = "1M"\n[phases.mixture]\nmystery = 100\n')
    result = granite("mix", "--phase", "1", "--recipe", recipe)
    assert result.returncode == 2 and "'mystery'" in result.stderr.decode()


def test_unknown_recipe():
    result = granite("recipe", "show", "no-such-recipe")
    assert result.returncode == 2 and "no recipe 'no-such-recipe'" in result.stderr.decode()


def test_unknown_flag_is_bad_usage_without_a_traceback():
    result = granite("mix", "--bogus")
    assert result.returncode == 2
    assert "No such option" in result.stderr.decode() and "Traceback" not in result.stderr.decode()


def test_writing_to_a_named_pipe_keeps_the_pipe(tmp_path):
    """An output that is no regular file (a FIFO, /dev/null) is written in place, never replaced by a renamed file."""
    import os
    import stat
    import threading

    from granite_cli.data.records import record_writer

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    with record_writer(str(fifo)) as sink:
        sink.write(b'{"id": "a"}\n')
    reader.join(timeout=10)
    assert received == [b'{"id": "a"}\n'] and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_zstd_cut_at_a_block_boundary_is_truncated_not_complete(tokenizer_dir, tmp_path):
    import io

    buffer = io.BytesIO()
    writer = zstandard.ZstdCompressor().stream_writer(buffer, closefd=False)
    writer.write(GOOD * 1000)
    writer.flush(zstandard.FLUSH_BLOCK)  # whole blocks so far: zstandard's own reader stops here without a word
    cut = buffer.tell()
    writer.write(GOOD * 1000)
    writer.flush(zstandard.FLUSH_FRAME)
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(buffer.getvalue()[:cut])
    for command in (["tokenize", path, "-t", tokenizer_dir, "-o", tmp_path / "out"], ["filter", path, "-o", tmp_path / "k.jsonl"]):
        result = granite(*command)
        assert result.returncode == 2 and "truncated" in result.stderr.decode(), result.stderr.decode()
    assert not (tmp_path / "out").exists()
    two_frames = tmp_path / "two.jsonl.zst"  # concatenated whole frames still read as one stream
    two_frames.write_bytes(zstandard.ZstdCompressor().compress(GOOD * 3) + zstandard.ZstdCompressor().compress(GOOD * 2))
    from granite_cli.data.records import read_records

    assert len(list(read_records([str(two_frames)]))) == 5


@pytest.mark.parametrize("stage", ["tokenize", "filter", "sft"])
def test_a_directory_where_a_record_file_belongs_is_bad_input(stage, tokenizer_dir, checkpoint, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    extra = {"tokenize": ["-t", tokenizer_dir, "-o", tmp_path / "out"], "filter": ["-o", tmp_path / "out.jsonl"],
             "sft": ["--init-from", checkpoint, "-o", tmp_path / "out", "--run-dir", tmp_path]}[stage]
    result = granite(stage, folder, *extra)
    err = result.stderr.decode()
    assert result.returncode == 2 and "is a directory" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.jsonl").exists()


def test_chat_with_no_room_to_answer_is_bad_usage_not_a_hang(checkpoint):
    result = granite("chat", checkpoint, "--max-new-tokens", "0", input=b"hello\n")
    assert result.returncode == 2 and "at least 1" in result.stderr.decode()


@pytest.mark.parametrize("flags, message", [(["--limit", "0"], "with N at least 1"),
                                            (["--limit", "-3"], "with N at least 1"),
                                            (["--tasks", ""], "--tasks names no task")])
def test_eval_refuses_limits_and_task_lists_that_evaluate_nothing_or_everything(checkpoint, tmp_path, flags, message):
    result = granite("eval", checkpoint, *flags, "-o", tmp_path / "out")
    assert result.returncode == 2 and message in result.stderr.decode()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncated", "missing", "garbage"])
def test_damaged_weights_are_bad_input_for_every_command_that_loads_them(checkpoint, tmp_path, damage):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    weights = broken / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(b"\x00" * 64)
    for command in (["info", broken], ["eval", broken, "--tasks", "heldout", "--limit", "1", "-o", tmp_path / "e"],
                    ["chat", broken], ["sft", REPO / "examples/data/chat/sft.jsonl.zst", "--init-from", broken, "-o",
                                       tmp_path / "s", "--run-dir", tmp_path, "--on-error", "skip"]):
        result = granite(*command, input=b"hi\n")
        err = result.stderr.decode()
        assert result.returncode == 2 and "Traceback" not in err, (command, err)
        assert any(m in err for m in ("weights file", "no model weights", "cannot load the model")), (command, err)


@pytest.mark.parametrize("lineage, message", [('{"x', "corrupt lineage"), ('{"stage": "sft"}', "not a list"),
                                                ('["sft"]', "not a list")])
def test_a_corrupt_lineage_is_bad_input_for_info(checkpoint, tmp_path, lineage, message):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "lineage.json").write_text(lineage)
    result = granite("info", broken)
    err = result.stderr.decode()
    assert result.returncode == 2 and "Traceback" not in err and message in err, err


def test_info_passes_over_a_machine_record_it_cannot_read(checkpoint, tmp_path):
    import shutil

    odd = tmp_path / "odd"
    shutil.copytree(checkpoint, odd)
    (odd / "lineage.json").write_text('[{"stage": "pretrain", "machine": "a string"}]')
    result = granite("info", odd)
    assert result.returncode == 0 and "ran on" not in result.stderr.decode()


@pytest.fixture(params=["zstd program", "zstandard in process"])
def zstd_reader(request, monkeypatch):
    """Both ways a .zst file is read: the `zstd` program in a child process (where installed) and the in-process
    decoder (elsewhere). They must agree on whole files and on damaged ones."""
    import shutil

    from granite_cli.data import records

    if request.param == "zstd program":
        if not shutil.which("zstd"):
            pytest.skip("the zstd program is not installed")
        monkeypatch.setattr(records, "ZSTD", shutil.which("zstd"))
    else:
        monkeypatch.setattr(records, "ZSTD", None)
    return records


def test_both_zstd_readers_read_frames_and_refuse_cut_files(zstd_reader, tmp_path):
    import io

    lines = [orjson.dumps({"id": str(i), "text": "x" * i}) + b"\n" for i in range(3000)]
    two_frames = tmp_path / "two.jsonl.zst"
    two_frames.write_bytes(zstandard.ZstdCompressor().compress(b"".join(lines[:1000]))
                           + zstandard.ZstdCompressor().compress(b"".join(lines[1000:])))
    assert [line for _, line in zstd_reader.iter_lines(str(two_frames))] == lines
    buffer = io.BytesIO()
    writer = zstandard.ZstdCompressor().stream_writer(buffer, closefd=False)
    writer.write(b"".join(lines[:1000]))
    writer.flush(zstandard.FLUSH_BLOCK)
    at_block = buffer.tell()
    writer.write(b"".join(lines[1000:]))
    writer.flush(zstandard.FLUSH_FRAME)
    for cut in (at_block, len(buffer.getvalue()) // 2, 7):
        path = tmp_path / f"cut-{cut}.jsonl.zst"
        path.write_bytes(buffer.getvalue()[:cut])
        with pytest.raises(zstd_reader.BadInput, match="truncated") as caught:
            list(zstd_reader.iter_lines(str(path)))
        assert str(path) in str(caught.value)


def test_a_reader_that_stops_early_leaves_no_decompressor_behind(zstd_reader, tmp_path):
    """mix reads what it needs of a source and stops: the child process (if any) is ended, not left running."""
    import os

    path = tmp_path / "big.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(GOOD * 200_000))
    before = set(os.listdir("/proc"))
    lines = zstd_reader.iter_lines(str(path))
    next(lines)
    lines.close()
    assert not [pid for pid in set(os.listdir("/proc")) - before if pid.isdigit() and _is_zstd(pid)]


def _is_zstd(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"zstd" in f.read()
    except OSError:
        return False
