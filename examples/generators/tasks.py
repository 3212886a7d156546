"""Seeded generators of verifiable tasks: each returns a prompt, a reference answer, the worked steps
that lead to it, and the verifier record an RL reward or an eval checker needs (docs/design.md, contract 3).

One function per task family; FAMILIES maps family name to (domain, generator). Every generator
takes a `random.Random` so that a seed reproduces the same bytes. A task may carry a `subject`: the held-out split
(build_data.task_pool) then keys on it rather than on the prompt, so near-identical wordings stay on one side.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import sqlite3

NAMES = ["Alice", "Bruno", "Chen", "Dana", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Julia", "Kofi", "Lena",
         "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Viktor", "Wen", "Yara"]
ITEMS = [("notebook", 3), ("pencil", 1), ("backpack", 25), ("lamp", 18), ("mug", 7), ("chair", 45),
         ("ticket", 12), ("plant", 9), ("book", 14), ("scarf", 11), ("puzzle", 16), ("kettle", 29)]
WORDS = ["river", "planet", "garden", "window", "silver", "orange", "bridge", "candle", "forest", "market",
         "rocket", "puzzle", "harbor", "meadow", "thunder", "lantern", "pepper", "violet", "compass", "island"]
TOPICS = ["the ocean", "autumn", "a busy city", "learning to cook", "a mountain hike", "public libraries",
          "electric bicycles", "the night sky", "a rainy morning", "friendship", "recycling", "a train journey"]


def task(family, domain, prompt, answer, steps, verifier):
    return {"family": family, "domain": domain, "prompt": prompt, "answer": str(answer), "steps": steps,
            "verifier": verifier}


def numeric(answer):
    return {"type": "numeric", "answer": answer}


def arithmetic(rng: random.Random):
    a, b, c = rng.randint(12, 999), rng.randint(2, 99), rng.randint(1, 500)
    op = rng.choice(["mul_add", "mul_sub", "add_mul"])
    if op == "mul_add":
        prompt, result = f"What is {a} * {b} + {c}?", a * b + c
        steps = [f"First multiply: {a} * {b} = {a * b}.", f"Then add {c}: {a * b} + {c} = {result}."]
    elif op == "mul_sub":
        prompt, result = f"Compute {a} * {b} - {c}.", a * b - c
        steps = [f"First multiply: {a} * {b} = {a * b}.", f"Then subtract {c}: {a * b} - {c} = {result}."]
    else:
        prompt, result = f"Calculate ({a} + {c}) * {b}.", (a + c) * b
        steps = [f"Inside the brackets: {a} + {c} = {a + c}.", f"Then multiply by {b}: {a + c} * {b} = {result}."]
    return task("arithmetic", "math", prompt, result, steps, numeric(result))


def word_problem(rng: random.Random):
    name = rng.choice(NAMES)
    (item, price), count = rng.choice(ITEMS), rng.randint(2, 12)
    (item2, price2), count2 = rng.choice(ITEMS), rng.randint(1, 6)
    budget = price * count + price2 * count2 + rng.randint(5, 80)
    total = price * count + price2 * count2
    change = budget - total
    prompt = (f"{name} has ${budget}. A {item} costs ${price} and a {item2} costs ${price2}. {name} buys {count} "
              f"{item}s and {count2} {item2}s. How many dollars does {name} have left?")
    steps = [f"The {item}s cost {count} * {price} = {price * count} dollars.",
             f"The {item2}s cost {count2} * {price2} = {price2 * count2} dollars.",
             f"Together that is {price * count} + {price2 * count2} = {total} dollars.",
             f"{name} has {budget} - {total} = {change} dollars left."]
    return task("word_problem", "math", prompt, change, steps, numeric(change))


# Arithmetic whose answer a rule gives without the operands: a number times 0, minus itself, divided by itself, to
# the power 0. The tiny model cannot copy digits from its prompt (README, rl), so it cannot do arithmetic on them,
# but it can learn to read the operation: these give the math stage something a 1.85M model can learn.
ARITHMETIC_RULES = [
    ("What is {a} * 0?", 0, "Any number times 0 is 0."),
    ("What is 0 * {a}?", 0, "0 times any number is 0."),
    ("What is {a} - {a}?", 0, "A number minus itself is 0."),
    ("Compute ({a} - {a}) * {b}.", 0, "The brackets hold a number minus itself, which is 0, and 0 times any number is 0."),
    ("What is 0 / {a}?", 0, "0 divided by a nonzero number is 0."),
    ("What is {a} / {a}?", 1, "A nonzero number divided by itself is 1."),
    ("What is {a} to the power of 0?", 1, "A nonzero number to the power of 0 is 1."),
    ("Compute {a}^0.", 1, "A nonzero number to the power of 0 is 1."),
    ("What is 1 to the power of {a}?", 1, "1 to any power is 1."),
    ("What is ({a} + {a}) / {a}?", 2, "A number plus itself is twice the number, and twice a number divided by it is 2."),
    ("What is {a} / {a} + 1?", 2, "A nonzero number divided by itself is 1, and 1 + 1 = 2."),
]


def arithmetic_rule(rng: random.Random):
    template, answer, rule = rng.choice(ARITHMETIC_RULES)
    prompt = template.format(a=rng.randint(2, 999), b=rng.randint(2, 99))
    return task("arithmetic_rule", "math", prompt, answer, [rule], numeric(answer))


def science(rng: random.Random):
    kind = rng.choice(["speed", "density", "ohm", "kinetic"])
    if kind == "speed":
        t, v = rng.randint(2, 9), rng.randint(10, 120)
        d = v * t
        prompt = f"A vehicle covers {d} km in {t} hours at constant speed. What is its speed in km/h?"
        steps, answer = [f"Speed is distance divided by time: {d} / {t} = {v} km/h."], v
    elif kind == "density":
        vol, rho = rng.randint(2, 40), rng.randint(1, 19)
        m = vol * rho
        prompt = f"An object has a mass of {m} g and a volume of {vol} cm^3. What is its density in g/cm^3?"
        steps, answer = [f"Density is mass divided by volume: {m} / {vol} = {rho} g/cm^3."], rho
    elif kind == "ohm":
        i, r = rng.randint(1, 12), rng.randint(2, 50)
        prompt = f"A current of {i} A flows through a {r} ohm resistor. What is the voltage across it in volts?"
        steps, answer = [f"By Ohm's law V = I * R = {i} * {r} = {i * r} V."], i * r
    else:
        m, v = rng.randint(1, 20), rng.randint(1, 15)
        ke = m * v * v / 2
        answer = int(ke) if ke == int(ke) else ke
        prompt = f"A {m} kg ball moves at {v} m/s. What is its kinetic energy in joules?"
        steps = [f"Kinetic energy is m * v^2 / 2 = {m} * {v * v} / 2 = {answer} J."]
    return task("science", "science", prompt, answer, steps, numeric(answer))


def ordering(rng: random.Random):
    people = rng.sample(NAMES, rng.randint(3, 5))
    facts = [f"{people[i]} is taller than {people[i + 1]}." for i in range(len(people) - 1)]
    rng.shuffle(facts)
    ask_tallest = rng.random() < 0.5
    answer = people[0] if ask_tallest else people[-1]
    prompt = " ".join(facts) + f" Who is the {'tallest' if ask_tallest else 'shortest'}?"
    steps = ["Chain the comparisons from tallest to shortest: " + " > ".join(people) + ".",
             f"So the {'tallest' if ask_tallest else 'shortest'} is {answer}."]
    return task("ordering", "logic", prompt, answer, steps, {"type": "exact", "answer": answer})


CONSTRAINTS = {
    "lowercase": "Use only lowercase letters.",
    "keyword": "Include the word '{keyword}'.",
    "sentences": "Write exactly {n} sentence{plural}.",
    "no_commas": "Do not use any commas.",
}
LEADS = ["Write about {topic}.", "Tell me about {topic}.", "Describe {topic}.", "Say something about {topic}.",
         "Talk about {topic}.", "Share your thoughts on {topic}.", "Write a short note about {topic}.",
         "Write a few lines about {topic}."]
# Format rules are checked on the answer's shape alone; a keyword rule needs a word copied from the prompt, which a
# tiny model cannot do (README, rl), so the keyword is drawn once in four: stage 1 then has rules it can learn.
FORMAT_RULES = ["lowercase", "sentences", "no_commas"]
# more subjects than the chat data's TOPICS, so that format-only prompts do not run out of unique wordings
IF_TOPICS = TOPICS + ["the desert", "a quiet village", "winter evenings", "a school garden", "old photographs",
                      "a football match", "the moon", "a summer festival"]


def instruction_following(rng: random.Random):
    topic, keyword, n = rng.choice(IF_TOPICS), rng.choice(WORDS), rng.randint(1, 3)
    rules = rng.sample(FORMAT_RULES, rng.randint(1, 2))
    if rng.random() < 0.25:
        rules[0] = "keyword"
    constraints = []
    for kind in sorted(rules):
        spec = {"type": kind}
        if kind == "keyword":
            spec["keyword"] = keyword
        if kind == "sentences":
            spec["n"] = n
        constraints.append(spec)
    rules_text = " ".join(CONSTRAINTS[c["type"]].format(plural="s" if c.get("n", 2) > 1 else "", **c)
                          for c in constraints)
    lead = rng.choice(LEADS).format(topic=topic)
    prompt = f"{lead} {rules_text}"
    sentences = [f"I think about {topic} and the {keyword} I once saw.", "It felt calm and bright.",
                 f"The memory of the {keyword} stays with me."]
    count = n if "sentences" in rules else 2
    response = " ".join(sentences[:count])
    if "lowercase" in rules:
        response = response.lower()
    return {**task("instruction_following", "instruction_following", prompt, response,
                   [f"Follow each rule: {rules_text}"], {"type": "constraints", "constraints": constraints}),
            "subject": lead}


def structured_output(rng: random.Random):
    name, age, city = rng.choice(NAMES), rng.randint(18, 90), rng.choice(["Lyon", "Osaka", "Lima", "Oslo", "Accra", "Perth"])
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                               "city": {"type": "string"}},
              "required": ["name", "age", "city"], "additionalProperties": False}
    expected = {"name": name, "age": age, "city": city}
    prompt = (f"Extract the person as JSON matching this schema: {json.dumps(schema)}\n"
              f"Text: \"{name} is {age} years old and lives in {city}.\" Answer with the JSON object only.")
    return task("structured_output", "structured_output", prompt, json.dumps(expected),
                ["Read the name, age and city from the text and fill the schema."],
                {"type": "json_schema", "schema": schema, "expected": expected})


SQL_SCHEMA = """CREATE TABLE departments (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE employees (id INTEGER PRIMARY KEY, name TEXT NOT NULL, department_id INTEGER REFERENCES departments(id),
  salary INTEGER NOT NULL, hired TEXT NOT NULL);"""


def sql_database(rng: random.Random) -> str:
    """A small SQLite database as a SQL script, so a verifier can rebuild it in memory."""
    departments = ["Research", "Sales", "Support", "Finance", "Design"]
    rows = [f"INSERT INTO departments VALUES ({i + 1}, '{d}');" for i, d in enumerate(departments)]
    for i, name in enumerate(rng.sample(NAMES, 12)):
        hired = dt.date(2015, 1, 1) + dt.timedelta(days=rng.randint(0, 3000))
        rows.append(f"INSERT INTO employees VALUES ({i + 1}, '{name}', {rng.randint(1, 5)}, "
                    f"{rng.randint(40, 150) * 1000}, '{hired.isoformat()}');")
    return SQL_SCHEMA + "\n" + "\n".join(rows)


def text_to_sql(rng: random.Random):
    database = sql_database(rng)
    dept = rng.choice(["Research", "Sales", "Support", "Finance", "Design"])
    year, salary = rng.randint(2015, 2023), rng.randint(40, 150) * 1000
    question, gold = rng.choice([
        (f"How many employees work in the {dept} department?",
         f"SELECT COUNT(*) FROM employees e JOIN departments d ON e.department_id = d.id WHERE d.name = '{dept}';"),
        (f"List the names of employees earning more than {salary}, alphabetically.",
         f"SELECT name FROM employees WHERE salary > {salary} ORDER BY name;"),
        (f"What is the average salary in the {dept} department?",
         f"SELECT AVG(e.salary) FROM employees e JOIN departments d ON e.department_id = d.id WHERE d.name = '{dept}';"),
        (f"Which employees were hired before {year}? Give their names in order of hire date.",
         f"SELECT name FROM employees WHERE hired < '{year}-01-01' ORDER BY hired;"),
    ])
    prompt = f"Given this SQLite schema:\n{SQL_SCHEMA}\nWrite one SQL query that answers: {question}"
    conn = sqlite3.connect(":memory:")
    conn.executescript(database)
    result = conn.execute(gold).fetchall()
    conn.close()
    return task("text_to_sql", "text_to_sql", prompt, gold, [f"The query returns {result}."],
                {"type": "sql", "database": database, "gold": gold})


def temporal(rng: random.Random):
    start = dt.date(1990, 1, 1) + dt.timedelta(days=rng.randint(0, 15000))
    if rng.random() < 0.5:
        days = rng.randint(3, 400)
        end = start + dt.timedelta(days=days)
        prompt = f"What date is {days} days after {start.isoformat()}? Answer in YYYY-MM-DD format."
        steps, answer = [f"Adding {days} days to {start.isoformat()} gives {end.isoformat()}."], end.isoformat()
    else:
        prompt = f"On which day of the week did {start.isoformat()} fall?"
        answer = start.strftime("%A")
        steps = [f"{start.isoformat()} was a {answer}."]
    return task("temporal", "temporal", prompt, answer, steps, {"type": "exact", "answer": answer})


ICL_RULES = {
    "reverse": (lambda w: w[::-1], "reverse the word"),
    "double_last": (lambda w: w + w[-1], "repeat the last letter"),
    "upper_first_last": (lambda w: w[0].upper() + w[1:-1] + w[-1].upper(), "capitalise the first and last letters"),
    "drop_vowels": (lambda w: "".join(c for c in w if c not in "aeiou"), "remove the vowels"),
}


def in_context(rng: random.Random):
    rule = rng.choice(sorted(ICL_RULES))
    apply, description = ICL_RULES[rule]
    words = rng.sample(WORDS, 5)
    shots = "\n".join(f"{w} -> {apply(w)}" for w in words[:4])
    answer = apply(words[4])
    prompt = f"Learn the pattern from the examples and apply it.\n{shots}\n{words[4]} ->"
    return task("in_context", "in_context_learning", prompt, answer, [f"The rule is: {description}."],
                {"type": "exact", "answer": answer})


def string_task(rng: random.Random):
    word = rng.choice(WORDS)
    letter = rng.choice(sorted(set(word)))
    kind = rng.choice(["count", "reverse", "sort"])
    if kind == "count":
        answer = word.count(letter)
        prompt = f"How many times does the letter '{letter}' appear in the word '{word}'?"
        steps = [f"Spell it out: {' '.join(word)}.", f"'{letter}' appears {answer} time(s)."]
        return task("string", "logic", prompt, answer, steps, numeric(answer))
    if kind == "reverse":
        answer = word[::-1]
        prompt = f"Write the word '{word}' backwards."
        steps = [f"Read the letters from the end: {' '.join(reversed(word))}."]
    else:
        words = rng.sample(WORDS, 4)
        answer = ", ".join(sorted(words))
        prompt = f"Sort these words alphabetically: {', '.join(words)}."
        steps = [f"Alphabetical order: {answer}."]
    return task("string", "logic", prompt, answer, steps, {"type": "exact", "answer": answer})


FAMILIES = {
    "arithmetic": arithmetic,
    "word_problem": word_problem,
    "science": science,
    "ordering": ordering,
    "instruction_following": instruction_following,
    "structured_output": structured_output,
    "text_to_sql": text_to_sql,
    "temporal": temporal,
    "in_context": in_context,
    "string": string_task,
    "arithmetic_rule": arithmetic_rule,
}
