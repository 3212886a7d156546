import math

import pytest
import torch

from granite_cli.errors import BadInput
from granite_cli.training.schedules import build_schedule
from model.presets import PUBLISHED_PARAMETERS, SMALL_DEPTHS, build_config, count_parameters


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_published_presets_have_the_exact_parameter_counts(name):
    from transformers import GraniteForCausalLM

    with torch.device("meta"):
        model = GraniteForCausalLM(build_config(name))
    assert count_parameters(model) == PUBLISHED_PARAMETERS[name]
    assert model.config.model_type == "granite" and model.config.tie_word_embeddings


@pytest.mark.parametrize("name, low, high", [("tiny-2m", 1.5e6, 2.5e6), ("small-10m", 7e6, 12e6), ("base-50m", 40e6, 60e6)])
def test_small_presets_land_near_their_names(name, low, high):
    from transformers import GraniteForCausalLM

    assert name in SMALL_DEPTHS
    with torch.device("meta"):
        model = GraniteForCausalLM(build_config(name, vocab_size=8192))
    assert low <= count_parameters(model) <= high


def test_unknown_preset():
    with pytest.raises(BadInput, match="unknown model preset"):
        build_config("huge")


def test_power_schedule_is_ibms_formula_capped_at_peak():
    schedule = build_schedule({"name": "power", "a": 4.0, "b": -0.5, "warmup": 0}, 0.02, total=1e9)
    assert schedule.lr(1e6, 1e9) == pytest.approx(4.0 / 1000)  # 4 * (1e6)^-0.5
    assert schedule.lr(100, 1e9) == 0.02  # capped at the peak


def test_linear_decays_to_zero_and_warmup_ramps():
    schedule = build_schedule({"name": "linear", "final_lr_ratio": 0.0, "warmup": 9}, 1.0, total=100)
    assert schedule.lr(0, 100) == pytest.approx(0.1)  # (0 + 1) / (9 + 1) of the target
    assert schedule.lr(50, 100) == pytest.approx(0.5)
    assert schedule.lr(100, 100) == 0.0


def test_exponential_ends_exactly_at_its_floor_even_zero():
    for final in (0.0, 0.1):
        schedule = build_schedule({"name": "exponential", "final_lr_ratio": final}, 1e-4, total=1000)
        assert schedule.lr(0, 1000) == pytest.approx(1e-4)
        assert schedule.lr(1000, 1000) == pytest.approx(1e-4 * final, abs=1e-15)
        values = [schedule.lr(n, 1000) for n in range(0, 1001, 100)]
        assert values == sorted(values, reverse=True)


def test_cosine_and_wsd_and_continuing_offset():
    cosine = build_schedule({"name": "cosine", "final_lr_ratio": 0.0}, 1.0, total=100)
    assert cosine.lr(50, 100) == pytest.approx(0.5)
    wsd = build_schedule({"name": "wsd", "decay_fraction": 0.2}, 1.0, total=100)
    assert wsd.lr(79, 100) == 1.0 and wsd.lr(90, 100) == pytest.approx(0.5)
    # a continuing phase: progress counts from its own start, given the parent's tokens as offset
    continued = build_schedule({"name": "linear"}, 1.0, total=100, offset=5000)
    assert continued.lr(5050, 100) == pytest.approx(0.5)


def test_schedule_needs_a_peak():
    with pytest.raises(BadInput, match="peak LR"):
        build_schedule({"name": "cosine"}, None, total=10)
    with pytest.raises(BadInput, match="unknown LR schedule"):
        build_schedule({"name": "sawtooth"}, 1.0, total=10)


def test_percentage_warmup():
    schedule = build_schedule({"name": "constant", "warmup": "10%"}, 1.0, total=1000)
    assert schedule.lr(49, 1000) == pytest.approx(0.5, rel=0.02)
    assert math.isclose(schedule.lr(200, 1000), 1.0)


def test_a_schedule_named_on_the_command_line_drops_the_recipes_constants_of_another():
    from granite_cli.training.schedules import continue_schedule

    recipe_table = {"name": "power", "warmup": "2%", "a": 4.0, "b": -0.51, "peak_lr": 0.02}
    schedule, _ = continue_schedule(recipe_table, [], 1000, None, None, "constant")
    assert schedule.lr(500, 1000) == 0.02  # constant at the recipe's peak, after the recipe's warmup
    same, _ = continue_schedule(recipe_table, [], 1000, None, None, "power")
    assert same.then.a == 4.0 and same.then.b == -0.51  # naming the recipe's own schedule keeps its constants
