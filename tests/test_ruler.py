"""RULER's synthetic tasks: generated from a seed, sized in the model's tokens, scored as RULER scores them."""

import pytest

from stages.eval import ruler


def test_every_task_hides_its_answers_in_the_prompt_and_scores_by_share_found():
    items = ruler.items([256, 1024], [0, 0.5, 1], 1, seed=3)
    assert {item["task"] for item in items} == set(ruler.TASKS)
    assert len(items) == 5 * 2 * 3 + 3 * 2  # needle tasks at every depth, the depthless ones once a length
    for item in items:
        context = item["question"].rsplit("\n\n", 1)[0]
        assert all(answer in context for answer in item["answers"]), item["id"]
        assert ruler.score(item, " ".join(item["answers"]))["accuracy"] == 1.0
        assert ruler.score(item, "I do not know")["accuracy"] == 0.0
    multivalue = next(item for item in items if item["task"] == "niah_multivalue")
    assert len(multivalue["answers"]) == 4
    assert ruler.score(multivalue, " ".join(multivalue["answers"][:2]))["accuracy"] == 0.5  # RULER's string_match_all
    assert ruler.items([256], [0.5], 1, seed=3) == [i for i in ruler.items([256], [0.5], 1, seed=3)]  # same seed, same items


def test_frequent_words_answers_are_the_three_strictly_most_frequent():
    """No tie at the third place (a tie made two answers right, the reference picked by string hashing)."""
    for item in ruler.items([256, 512, 1024, 2048], [0.5], 8, seed=0):
        if item["task"] == "fwe":
            text = item["question"].split(" ... ")[1].split(" ...")[0].split()
            counts = sorted(((text.count(w), w) for w in set(text)), reverse=True)
            assert {w for _, w in counts[:3]} == set(item["answers"]) and counts[2][0] > counts[3][0], item["id"]


def test_needle_depth_places_the_needle():
    start, end = (next(i for i in ruler.items([1024], [d], 1, seed=0) if i["task"] == "niah_single") for d in (0, 1))
    position = lambda item: item["question"].index(item["answers"][0]) / len(item["question"])
    assert position(start) < 0.1 and position(end) > 0.8


def test_prompts_are_sized_in_the_models_tokens(tokenizer_dir):
    from granite_cli.data.tokenizer_io import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_dir))
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    for item in ruler.items([512, 2048], [0.5], 1, seed=0, count_tokens=count):
        assert count(item["question"]) == pytest.approx(item["length"], rel=0.05), item["id"]


def test_effective_length_is_the_longest_length_passing_with_every_shorter_one():
    table = {"a": {256: {"0": 1.0}, 512: {"0": 0.9}, 1024: {"0": 0.5}, 2048: {"0": 1.0}},
             "b": {256: {"0": 1.0}, 512: {"0": 0.9}, 1024: {"0": 0.9}, 2048: {"0": 1.0}}}
    assert ruler.effective_length(table) == 512  # 1024 fails (mean 0.7), so 2048 does not count
    assert ruler.effective_length({"a": {256: {"0": 0.2}}}) is None
    assert ruler.grids({"a len 256 depth 0": {"accuracy": 0.5}, "a len 256 depth 1": {"accuracy": 1.0}}) == \
        {"a": {256: {"0": 0.5, "1": 1.0}}}
