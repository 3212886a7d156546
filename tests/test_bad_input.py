"""Every kind of bad input gives one clear message naming the file (and line), exit 2, and no output."""

import gzip

import orjson
import pytest
import zstandard

from conftest import granite

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
