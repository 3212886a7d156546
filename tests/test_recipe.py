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
    assert recipe.phases[5].stages[-1].mixture == {"books": 80, "code-repositories": 20}
    assert [s.length for s in recipe.phases[5].stages] == [32768, 131072, 524288]
    assert recipe.mixture(5, "512K") == {"books": 80, "code-repositories": 20} and recipe.mixture(5, "32K") == recipe.mixture(4)
    assert [(s.lr, s.beta) for s in recipe.rl.stages] == [(5e-7, 0.05), (3e-7, 0.09), (3e-7, 0.09), (5e-7, 0.05)]
    assert (recipe.rl.samples_per_prompt, recipe.rl.prompts_per_step, recipe.rl.max_context) == (16, 64, 8192)
    assert (recipe.sft.epochs, recipe.sft.lr, recipe.sft.seq_len, recipe.sft.batch_sequences) == (3, 5e-6, 16384, 256)
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


@pytest.mark.parametrize("text, named", [
    ('[sft]\nepochs = 3\nlearning_rate = 1e-5\n', "[sft]: unknown key 'learning_rate'"),
    ('[[phases]]\nnumber = 1\n[phases.training]\nseq_length = 4096\n', "unknown key 'seq_length'"),
    ('[model]\npreset = 3\n', "[model].preset: expected a string"),
    ('[rl]\nepsilon_hi = 0.3\n', "[rl]: unknown key 'epsilon_hi'"),
    ('[[rl.stages]]\nnumber = 1\nname = "x"\nlr = 1e-6\n', "missing 'beta'"),
    ('lr = 3\n', "unknown top-level key 'lr'"),
])
def test_an_unknown_or_mistyped_key_is_an_error_naming_it_and_the_file(tmp_path, text, named):
    bad = tmp_path / "typo.toml"
    bad.write_text(text)
    for command in ("show", "check"):
        result = granite("recipe", command, bad)
        assert result.returncode == 2 and named in result.stderr.decode() and "typo.toml" in result.stderr.decode()
        assert "Traceback" not in result.stderr.decode()


def test_a_schedule_takes_only_its_own_constants(tmp_path):
    bad = tmp_path / "schedule.toml"
    bad.write_text('[sources.web]\nhf = "x"\n[[phases]]\nnumber = 1\ntokens = "1M"\n[phases.mixture]\nweb = 100\n'
                   '[phases.schedule]\nname = "constant"\nb = -0.5\n')
    result = granite("recipe", "check", bad, "--structure-only")
    assert result.returncode == 2 and "schedule 'constant' takes no 'b'" in result.stderr.decode()


def test_show_and_check_agree_on_a_stage_without_rope_theta(tmp_path):
    recipe = tmp_path / "stages.toml"
    recipe.write_text('[sources.web]\nhf = "x"\n[[phases]]\nnumber = 5\ntokens = "2M"\n[phases.mixture]\nweb = 100\n'
                      '[[phases.stages]]\nname = "32K"\nlength = "32K"\ntokens = "1M"\nmixture = { web = 100 }\n')
    assert granite("recipe", "check", recipe, "--structure-only").returncode == 0
    shown = granite("recipe", "show", recipe)
    assert shown.returncode == 0 and "rope_theta by extend-context's rule" in shown.stderr.decode()


def test_keys_documents_every_table():
    err = granite("recipe", "keys").stderr.decode()
    for header in ("[model]", "[[phases.stages]]", "[phases.merge]", "[sft]", "[filter]", "[rl]", "[[rl.stages]]"):
        assert header in err
    assert "epsilon_high" in err and "rope_theta" in err and "batch_sequences" in err
