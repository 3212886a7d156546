import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


def granite(*args, input=None, cwd=None, check=False):
    """Run the real CLI in a subprocess, so exit statuses and stdout/stderr separation are tested as users see them."""
    result = subprocess.run([sys.executable, "-m", "granite_cli", *map(str, args)], input=input, capture_output=True,
                            cwd=cwd, env={**os.environ, "COLUMNS": "200"})
    if check and result.returncode != 0:
        raise AssertionError(f"granite {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr.decode()}")
    return result


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A small BPE tokenizer trained on the bundled data (the tiny recipe's sources, 200 KB each)."""
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    granite("tokenize", "train", "--vocab-size", "2048", "--max-bytes", "200K", "-o", out,
            "--run-dir", out.parent / "run", check=True)
    return out
