import pytest

from conftest import granite
from granite_cli.errors import BadInput
from granite_cli.recipe import load_recipe, parse_count


@pytest.mark.parametrize("text, expected", [("10T", 10 * 10**12), ("500B", 500 * 10**9), ("4M", 4_000_000),
                                            ("32K", 32_000), ("0.4T", 400 * 10**9), (4096, 4096), ("1.5k", 1500)])
def test_parse_count_units(text, expected):
    assert parse_count(text) == expected


@pytest.mark.parametrize("text", ["ten", "4X", "-3", "", "1.2.3M"])
def test_parse_count_rejects_garbage(text):
    with pytest.raises(BadInput):
        parse_count(text)


def test_granite_recipe_encodes_the_published_phases():
    recipe = load_recipe("granite-4.1")
    assert [recipe.phases[n].tokens for n in range(1, 6)] == [10 * 10**12, 2 * 10**12, 2 * 10**12, 5 * 10**11, 4 * 10**11]
    assert recipe.mixture(1) == {"commoncrawl": 59, "code": 20, "math": 7, "technical": 10.5, "multilingual": 2, "domain": 1.5}
    assert recipe.mixture(5) == recipe.mixture(4)  # the 32K/128K stages train on the phase-4 mix
    assert recipe.phases[5].stages[-1]["mixture"] == {"books": 80, "code-repositories": 20}
    assert recipe.problems(check_data=False) == []


def test_tiny_recipe_has_the_same_mixtures_and_resolves_its_data():
    tiny, real = load_recipe("tiny"), load_recipe("granite-4.1")
    assert sorted(tiny.phases) == sorted(real.phases)
    for number in tiny.phases:
        assert tiny.mixture(number) == real.mixture(number)
    assert tiny.problems() == []


def test_check_reports_every_problem_at_once(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('''
name = "bad"
[sources.web]
paths = ["nowhere/*.jsonl"]
[[phases]]
number = 1
tokens = "1M"
[phases.mixture]
web = 60
books = 30
''')
    result = granite("recipe", "check", bad)
    err = result.stderr.decode()
    assert result.returncode == 2
    assert "sums to 90%" in err and "'books' is not declared" in err and "no file matches" in err


def test_unparseable_units_name_the_file(tmp_path):
    bad = tmp_path / "units.toml"
    bad.write_text('[[phases]]\nnumber = 1\ntokens = "lots"\n')
    result = granite("recipe", "show", bad)
    assert result.returncode == 2 and "units.toml" in result.stderr.decode() and "lots" in result.stderr.decode()


def test_show_prints_tables_on_stderr_only():
    result = granite("recipe", "show", "granite-4.1", "--phase", "3")
    assert result.returncode == 0 and result.stdout == b""
    assert "long-cot" in result.stderr.decode() and "16.67" in result.stderr.decode()
