"""RULER's synthetic long-context tasks (Hsieh et al., 2024), generated offline from a seed at each context length
and needle depth, and scored as RULER scores them: the share of the expected strings found in the answer.

    passkey          a pass key in filler text (the task `ruler` started with)
    niah_single      one "special magic number" for a key, in filler text
    niah_multikey    four needles with different keys; the question asks for one
    niah_multivalue  four values for one key; all four asked for
    niah_multiquery  four keys; all four asked for
    vt               variable tracking: a chain of assignments (VAR B = VAR A ...) in filler; every name holding the value
    cwe              common-words extraction: a numbered word list; the five words that recur most
    fwe              frequent-words extraction: "coded" words drawn from a Zipf law; the three most frequent

Lengths are in tokens, approximated by words (`tokens_per_word`). Depth places the needles (0: the start, 1: the
end); vt, cwe and fwe have none (their items count once per length). RULER's effective length is the longest
length at which the mean score over tasks, and at every shorter length, reaches the threshold (RULER's: Llama-2-7B's
85.6%).
"""

from __future__ import annotations

import random
import string
from collections import Counter, defaultdict

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEYS = ["apple", "river", "candle", "falcon", "marble", "lantern", "cactus", "violin", "harbor", "pepper", "meadow",
        "rocket", "saddle", "tunnel", "walnut", "zebra"]
TASKS = ("passkey", "niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe")
DEPTHLESS = ("vt", "cwe", "fwe")
THRESHOLD = 0.856


def items(lengths: list[int], depths: list[float], per_cell: int, seed: int, count_tokens=None,
          tokens_per_word: float = 1.3) -> list[dict]:
    """Every task's items at each length and depth. With `count_tokens` (the model's tokenizer) each prompt is sized
    to its length in that tokenizer's tokens, as RULER does; without one, by an estimate of tokens per word."""
    made = []
    for task in TASKS:
        for length in lengths:
            for depth in ([None] if task in DEPTHLESS else depths):
                for k in range(per_cell):
                    name = f"{task}-{length}-{'-' if depth is None else f'{depth:g}'}-{k}"
                    question, answers = fitted(task, name, seed, length, depth, count_tokens, tokens_per_word)
                    made.append({"id": name, "task": task, "length": length, "depth": depth, "answers": answers,
                                 "answer": ", ".join(answers), "question": question})
    return made


def fitted(task: str, name: str, seed: int, length: int, depth, count_tokens, tokens_per_word: float):
    """(prompt, answers) of about `length` tokens: the haystack is resized by the measured count, up to four times,
    each time from the item's own seed (so the same item comes out whatever the tokenizer was asked before)."""
    words = max(int(length / tokens_per_word), 40)
    for _ in range(4 if count_tokens else 1):
        context, question, answers = GENERATORS[task](random.Random(f"{seed}:{name}"), max(words - 60, 20), depth)
        prompt = f"{context}\n\n{question}"
        if count_tokens is None:
            break
        tokens = count_tokens(prompt)
        if abs(tokens - length) <= length * 0.03:
            break
        words = int(words * length / tokens)
    return prompt, answers


def score(item: dict, output: str) -> dict:
    found = [answer.lower() in output.lower() for answer in item["answers"]]
    return {"accuracy": sum(found) / len(found)}


def subtask(item: dict) -> str:
    depth = "-" if item["depth"] is None else f"{item['depth']:g}"
    return f"{item['task']} len {item['length']} depth {depth}"


def grids(subtasks: dict) -> dict:
    """{task: {length: {depth: mean accuracy}}} from a summary's subtasks ("TASK len L depth D": {"accuracy": v})."""
    table: dict = defaultdict(lambda: defaultdict(dict))
    for name, metrics in subtasks.items():
        task, _, length, _, depth = name.split()
        table[task][int(length)][depth] = metrics["accuracy"]
    return {task: dict(by_length) for task, by_length in table.items()}


def effective_length(table: dict, threshold: float = THRESHOLD):
    """The longest length whose mean over tasks (and every shorter length's) reaches the threshold; None if none does."""
    lengths = sorted({length for by_length in table.values() for length in by_length})
    best = None
    for length in lengths:
        means = [sum(by_length[length].values()) / len(by_length[length]) for by_length in table.values() if length in by_length]
        if sum(means) / len(means) < threshold:
            break
        best = length
    return best


# ------------------------------------------------------------------ generators: (context, question, answers)
def _hay(words: int) -> list[str]:
    return (FILLER * (words // len(FILLER.split()) + 1)).split()[:words]


def _insert(hay: list[str], needles: list[str], depth: float, rng: random.Random) -> str:
    """The needles placed around `depth` of the haystack (several spread a little after it), at sentence ends."""
    words = list(hay)
    for i, needle in enumerate(reversed(needles)):
        at = min(len(words), int(len(words) * depth) + (len(needles) - 1 - i) * rng.randint(0, 3))
        words[at:at] = [needle]
    return " ".join(words)


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _passkey(rng, words, depth):
    key = str(rng.randint(10000, 99999))
    context = _insert(_hay(words), [f"The pass key is {key}. Remember it. {key} is the pass key."], depth, rng)
    return ("There is important info hidden inside a lot of irrelevant text. Find it and memorize it.\n\n" + context,
            "What is the pass key? The pass key is", [key])


def _needle(key: str, value: str) -> str:
    return f"One of the special magic numbers for {key} is: {value}."


def _niah(rng, words, depth, keys: int, values: int, asked: int):
    chosen = rng.sample(KEYS, keys)
    pairs = [(key, _number(rng)) for key in chosen for _ in range(values if key == chosen[0] else 1)]
    context = _insert(_hay(words), [_needle(k, v) for k, v in pairs], depth, rng)
    queried = chosen[:asked]
    answers = [v for k, v in pairs if k in queried]
    if values > 1:
        question = f"What are all the special magic numbers for {queried[0]} mentioned in the provided text? The special " \
                   f"magic numbers for {queried[0]} mentioned in the provided text are"
    elif asked > 1:
        question = f"What are all the special magic numbers for {', '.join(queried)} mentioned in the provided text? The " \
                   f"special magic numbers for {', '.join(queried)} mentioned in the provided text are"
    else:
        question = f"What is the special magic number for {queried[0]} mentioned in the provided text? The special magic " \
                   f"number for {queried[0]} mentioned in the provided text is"
    return "Some special magic numbers are hidden within the following text. Make sure to memorize it.\n\n" + context, \
        question, answers


def _variable_tracking(rng, words, depth):
    value = str(rng.randint(10000, 99999))
    names = ["".join(rng.choices(string.ascii_uppercase, k=5)) for _ in range(5)]
    chain = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
    hay = _hay(words)
    spots = sorted(rng.sample(range(len(hay)), len(chain)))
    for offset, (spot, line) in enumerate(zip(spots, chain)):
        hay.insert(spot + offset, line)
    return ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n" + " ".join(hay),
            f"Question: Find all variables that are assigned the value {value} in the text above. Answer: According to "
            f"the chain(s) of variable assignment in the text above, 5 variables are assigned the value {value}, they are:",
            names)


def _word(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 8)))


def _common_words(rng, words, depth):
    common = [_word(rng) for _ in range(5)]
    repeats = max(3, words // 45)
    rare = [_word(rng) for _ in range(max(words // 3 - 5 * repeats, 5))]  # an entry "12. word" is ~3 words' tokens
    pool = common * repeats + rare
    rng.shuffle(pool)
    listed = " ".join(f"{i + 1}. {w}" for i, w in enumerate(pool))
    return (f"Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones "
            f"that appear most often.\n{listed}",
            "Question: What are the 5 most common words in the above list? Answer: The top 5 words that appear most often "
            "in the list are:", common)


def _frequent_words(rng, words, depth):
    """Drawn again until the third most frequent word is more frequent than the fourth: with a tie two answers
    would be right, and which one the reference held depended on Python's per-process string hashing."""
    vocabulary = [_word(rng) for _ in range(60)]
    weights = [1 / (rank + 1) ** 1.5 for rank in range(len(vocabulary))]  # Zipf: the first three are the most frequent
    while True:
        coded = rng.choices(vocabulary, weights=weights, k=max(words // 3, 20))  # a made-up word is ~3 tokens
        top = Counter(coded).most_common(4)
        if len(top) < 4 or top[2][1] > top[3][1]:
            break
    return ("Read the following coded text and track the frequency of each coded word. Find the three most frequently "
            f"appeared coded words. ... {' '.join(coded)} ...",
            "Question: Do not provide any explanation. Please ignore the dots '....'. What are the three most frequently "
            "appeared words in the above coded text? Answer: According to the coded text above, the three most frequently "
            "appeared words are:", [word for word, _ in top[:3]])


GENERATORS = {
    "passkey": _passkey,
    "niah_single": lambda rng, words, depth: _niah(rng, words, depth, keys=1, values=1, asked=1),
    "niah_multikey": lambda rng, words, depth: _niah(rng, words, depth, keys=4, values=1, asked=1),
    "niah_multivalue": lambda rng, words, depth: _niah(rng, words, depth, keys=1, values=4, asked=1),
    "niah_multiquery": lambda rng, words, depth: _niah(rng, words, depth, keys=4, values=1, asked=4),
    "vt": _variable_tracking,
    "cwe": _common_words,
    "fwe": _frequent_words,
}


def show(table: dict, effective) -> list:
    """One length x depth table a task (rich Tables), and the effective length."""
    from rich.table import Table

    views = []
    for task, by_length in table.items():
        depths = sorted({d for row in by_length.values() for d in row}, key=lambda d: (d == "-", d))
        view = Table(title=f"ruler {task}: accuracy by length (rows) and depth (columns)")
        view.add_column("length", justify="right")
        for depth in depths:
            view.add_column(depth, justify="right")
        for length in sorted(by_length):
            view.add_row(str(length), *(f"{by_length[length][d]:.2f}" if d in by_length[length] else "" for d in depths))
        views.append(view)
    views.append(f"ruler effective length (mean over tasks >= {THRESHOLD:.1%} at it and every shorter length): "
                 f"{effective if effective else 'none of the lengths asked'}")
    return views
