"""Hand-checked cases for every IFEval instruction: one response that follows it, one that does not."""

import pytest

from granite_cli.verify.ifeval import CHECKERS, follows, score

CASES = [
    ("keywords:existence", {"keywords": ["river", "stone"]}, "A stone sat by the river.", "A stone sat there."),
    ("keywords:frequency", {"keyword": "sun", "frequency": 2, "relation": "at least"}, "Sun, sun, sun.", "The sun."),
    ("keywords:forbidden_words", {"forbidden_words": ["rain"]}, "Clouds gather.", "Rain falls."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "less than"}, "zebra", "zigzag"),
    ("language:response_language", {"language": "fr"}, "Ceci est une phrase écrite en français, bien sûr.",
     "This sentence is clearly written in English, of course."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"}, "One. Two.", "One. Two. Three."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n***\nSecond part.", "Only one part."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "one two three four five", "one two"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "Start here.\n\nThen we end.", "Start here.\n\nSo we end."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address].", "Dear [name]."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello.\nP.S. Bye.", "Hello. Bye."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* apple\n* pear", "* apple\n* pear\n* fig"),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Yes, it is."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and *two*", "*one* only"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nintro\nSection 2\nend", "Section 1\nintro"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "a: 1"),
    ("detectable_format:title", {}, "<<A Title>>\ntext", "A Title\ntext"),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", "Only one answer."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "Say hi. Hi!", "Hi!"),
    ("startend:end_checker", {"end_phrase": "Any questions?"}, "That is all. Any questions?", "Any questions? That is all."),
    ("startend:quotation", {}, '"quoted"', "not quoted"),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "THIS is VERY loud", "this is QUIET"),
    ("change_case:english_capital", {}, "THIS IS ALL IN CAPITAL LETTERS AND IN ENGLISH.", "This is not all capitals."),
    ("change_case:english_lowercase", {}, "this is all lowercase and in english.", "This is Not."),
    ("punctuation:no_comma", {}, "No commas here.", "Commas, here."),
]


def test_every_instruction_has_a_case():
    assert {case[0] for case in CASES} == set(CHECKERS)


@pytest.mark.parametrize("instruction, kwargs, good, bad", CASES, ids=[c[0] for c in CASES])
def test_instruction(instruction, kwargs, good, bad):
    prompt = kwargs.get("prompt_to_repeat", "")
    assert follows(instruction, good, kwargs, prompt)
    assert not follows(instruction, bad, kwargs, prompt)


def test_strict_and_loose_levels():
    item = {"prompt": "p", "instruction_id_list": ["punctuation:no_comma", "startend:quotation"], "kwargs": [{}, {"x": None}]}
    assert score(item, '"a b"')["prompt_level_strict"] == 1.0
    half = score(item, '"a, b"')
    assert half["prompt_level_strict"] == 0.0 and half["inst_level_strict"] == 0.5
    # loose scoring forgives an opening line the model added before the quoted answer
    relaxed = score(item, 'Sure, here it is:\n"a b"')
    assert relaxed["prompt_level_strict"] == 0.0 and relaxed["prompt_level_loose"] == 1.0
    assert relaxed["inst_level_strict"] == 0.0  # "Sure," has a comma and the text does not start with a quote
    assert relaxed["average"] == pytest.approx((0.0 + 0.0 + 1.0 + 1.0) / 4)
