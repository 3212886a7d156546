"""Seeded generators of chat samples (docs/design.md, contract 2) and RL prompts (contract 3).

Tasks from tasks.py become single-turn, multi-turn and system-prompted conversations; tools.py-like
schemas give tool-calling conversations; fictional company fact sheets give RAG samples whose answers
are checkable against the documents. A small share of SFT samples carries a deliberate, labelled defect
(`meta.defect`) so that the filter stage has known bad samples to reject.
"""

from __future__ import annotations

import json
import random
import re

from generators.tasks import NAMES, TOPICS

SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a careful assistant. Show your reasoning briefly.",
                  "You are Granite, an AI assistant built by IBM. Answer accurately and concisely."]


def answer_text(task: dict) -> str:
    if task["domain"] in ("instruction_following", "structured_output", "text_to_sql"):
        return task["answer"]
    return " ".join(task["steps"]) + f" The answer is {task['answer']}."


def prompt_messages(task: dict, rng: random.Random, system: bool) -> list[dict]:
    messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if system else []
    return messages + [{"role": "user", "content": task["prompt"]}]


def task_sample(task: dict, rng: random.Random) -> dict:
    messages = prompt_messages(task, rng, system=rng.random() < 0.3)
    messages.append({"role": "assistant", "content": answer_text(task)})
    return {"messages": messages, "source": f"task/{task['family']}"}


def multi_turn_sample(first: dict, second: dict, rng: random.Random) -> dict:
    messages = prompt_messages(first, rng, system=rng.random() < 0.5)
    messages += [{"role": "assistant", "content": answer_text(first)},
                 {"role": "user", "content": "Thanks. Another one: " + second["prompt"]},
                 {"role": "assistant", "content": answer_text(second)}]
    return {"messages": messages, "source": "multi_turn"}


def rl_prompt(task: dict, rng: random.Random) -> dict:
    return {"messages": prompt_messages(task, rng, system=False), "domain": task["domain"],
            "verifier": task["verifier"], "source": f"task/{task['family']}"}


# ---------------------------------------------------------------- tool calling
TOOLS = [
    {"name": "get_weather", "description": "Current weather for a city.",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                     "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                    "required": ["city"]}},
    {"name": "convert_currency", "description": "Convert an amount between two ISO currency codes.",
     "parameters": {"type": "object", "properties": {"amount": {"type": "number"}, "from": {"type": "string"},
                                                     "to": {"type": "string"}},
                    "required": ["amount", "from", "to"]}},
    {"name": "search_flights", "description": "Find flights between two airports on a date.",
     "parameters": {"type": "object", "properties": {"origin": {"type": "string"}, "destination": {"type": "string"},
                                                     "date": {"type": "string", "description": "YYYY-MM-DD"}},
                    "required": ["origin", "destination", "date"]}},
    {"name": "get_stock_price", "description": "Latest price of a stock ticker.",
     "parameters": {"type": "object", "properties": {"ticker": {"type": "string"}}, "required": ["ticker"]}},
]
CITIES = ["Lyon", "Osaka", "Lima", "Oslo", "Accra", "Perth", "Quito", "Porto"]
AIRPORTS = ["JFK", "CDG", "NRT", "LHR", "GRU", "SYD", "FRA", "MAD"]


def tool_call_sample(rng: random.Random) -> dict:
    tools = rng.sample(TOOLS, rng.randint(2, len(TOOLS)))
    tool = rng.choice(tools)
    name = tool["name"]
    if name == "get_weather":
        cities = rng.sample(CITIES, rng.choice([1, 1, 2]))  # sometimes parallel calls
        unit = rng.choice(["celsius", "fahrenheit"])
        user = f"What's the weather in {' and '.join(cities)} in {unit}?"
        calls = [{"name": name, "arguments": {"city": c, "unit": unit}} for c in cities]
        results = [{"city": c, "temperature": rng.randint(-5, 35), "unit": unit} for c in cities]
        final = " ".join(f"It is {r['temperature']} degrees {unit} in {r['city']}." for r in results)
    elif name == "convert_currency":
        amount, (a, b) = rng.randint(5, 900), rng.sample(["USD", "EUR", "JPY", "GBP", "CHF"], 2)
        rate = round(rng.uniform(0.5, 1.5), 3)
        user = f"How much is {amount} {a} in {b}?"
        calls = [{"name": name, "arguments": {"amount": amount, "from": a, "to": b}}]
        results = [{"amount": round(amount * rate, 2), "currency": b}]
        final = f"{amount} {a} is {results[0]['amount']} {b}."
    elif name == "search_flights":
        o, d = rng.sample(AIRPORTS, 2)
        date = f"2027-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        user = f"Find me a flight from {o} to {d} on {date}."
        calls = [{"name": name, "arguments": {"origin": o, "destination": d, "date": date}}]
        results = [{"flights": [{"number": f"GR{rng.randint(100, 999)}", "departs": f"{rng.randint(6, 22):02d}:15"}]}]
        f = results[0]["flights"][0]
        final = f"Flight {f['number']} leaves {o} for {d} on {date} at {f['departs']}."
    else:
        ticker = rng.choice(["IBM", "ACME", "GLOBX", "INIT"])
        price = round(rng.uniform(10, 400), 2)
        user = f"What's the current price of {ticker}?"
        calls = [{"name": name, "arguments": {"ticker": ticker}}]
        results = [{"ticker": ticker, "price": price}]
        final = f"{ticker} is trading at {price}."
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": "", "tool_calls": calls}]
    messages += [{"role": "tool", "content": json.dumps(r)} for r in results]
    messages.append({"role": "assistant", "content": final})
    return {"messages": messages, "tools": tools, "source": "tool_calling"}


def tool_irrelevance_sample(task: dict, rng: random.Random) -> dict:
    """Tools are offered but none fits: the right answer calls nothing."""
    sample = task_sample(task, rng)
    sample.update(tools=rng.sample(TOOLS, 2), source="tool_irrelevance")
    return sample


# ---------------------------------------------------------------- RAG
COMPANY_SYLLABLES = ["Nor", "Vel", "Tam", "Ori", "Kes", "Lum", "Bra", "Zen", "Quo", "Fal"]
INDUSTRIES = ["solar panels", "bicycles", "tea", "robotics", "textiles", "ferries", "maps", "ceramics"]


def company(rng: random.Random) -> dict:
    name = "".join(rng.sample(COMPANY_SYLLABLES, 2)) + rng.choice(["a", "ix", "on", "ar"])
    return {"name": name, "founded": rng.randint(1890, 2020), "city": rng.choice(CITIES),
            "employees": rng.randint(12, 90000), "industry": rng.choice(INDUSTRIES), "founder": rng.choice(NAMES)}


def fact_sheet(c: dict, doc_id: str) -> dict:
    text = (f"{c['name']} is a maker of {c['industry']} based in {c['city']}. It was founded in {c['founded']} by "
            f"{c['founder']} and employs {c['employees']} people.")
    return {"id": doc_id, "text": text}


def rag_sample(rng: random.Random) -> dict:
    companies = [company(rng) for _ in range(3)]
    documents = [fact_sheet(c, f"doc-{i}") for i, c in enumerate(companies)]
    target = rng.choice(companies)
    field, question = rng.choice([("founded", "When was {name} founded?"), ("city", "Where is {name} based?"),
                                  ("employees", "How many people does {name} employ?"),
                                  ("founder", "Who founded {name}?")])
    answer = f"According to the documents, the answer is {target[field]}."
    return {"messages": [{"role": "user", "content": question.format(**target)},
                         {"role": "assistant", "content": answer}],
            "documents": documents, "source": "rag", "meta": {"grounded_answer": str(target[field])}}


# ---------------------------------------------------------------- identity, calibration, chat
IDENTITY_PROMPTS = ["Who are you?", "What is your name?", "Which company made you?", "Are you ChatGPT?",
                    "Tell me about yourself in one sentence.", "Who trained you?", "What model am I talking to?"]
IDENTITY_ANSWER = "I am Granite, a language model built by IBM."
# phrasings the sft data never uses: the RL identity stage's held-out questions come from these
IDENTITY_PARAPHRASES = ["Introduce yourself.", "What should I call you?", "Who built you?", "Are you made by Google?",
                        "What AI are you?", "Which lab developed you?", "Who is your creator?", "What are you called?",
                        "Are you a model from OpenAI?", "Name the company behind you.", "Which assistant is this?",
                        "Who made this chatbot?", "What language model is answering me?", "Are you Claude?",
                        "Say your name and who created you.", "Who developed the model I am chatting with?",
                        "Which organisation trained this assistant?", "What is the name of this AI?",
                        "Are you built by Meta?", "Tell me who you are and who made you.", "Do you have a name?",
                        "Who owns the model behind this chat?", "Is this Gemini?", "Which tech company are you from?",
                        "What kind of assistant are you, and whose?", "Where do you come from?", "Are you Llama?",
                        "Who wrote your software?", "What family of models do you belong to?", "Are you an IBM product?",
                        "Which firm is responsible for you?", "How should I refer to you?", "Who created you, exactly?",
                        "What is this assistant called?", "Were you made by Microsoft?", "Give me your name, please.",
                        "Which model powers this conversation?", "Who is behind this assistant?",
                        "Identify yourself.", "Whose language model are you?"]
UNKNOWABLE = ["What number between 1 and {n} am I thinking of?", "What did {name} eat for breakfast this morning?",
              "What will the exact temperature be in {city} at noon on {date}?",
              "What is the phone number of my neighbour {name}?", "Which card will I draw next from my deck of {n}?"]
ABSTAIN_ANSWER = "I can't know that: it isn't something I have information about. If you can share more details, I'm happy to help."
CHAT_TEMPLATES = ["Give me three tips for {topic}.", "Explain {topic} to a ten-year-old.",
                  "Write a short poem about {topic}.", "What are the pros and cons of {topic}?",
                  "Suggest a weekend plan involving {topic}."]


def identity_prompt(rng: random.Random) -> dict:
    return {"messages": [{"role": "user", "content": rng.choice(IDENTITY_PROMPTS)}], "domain": "identity",
            "verifier": {"type": "identity", "name": "Granite", "maker": "IBM"}, "source": "identity"}


def identity_paraphrase_prompt(question: str) -> dict:
    return {"messages": [{"role": "user", "content": question}], "domain": "identity",
            "verifier": {"type": "identity", "name": "Granite", "maker": "IBM"}, "source": "identity/paraphrase"}


def calibration_prompt(rng: random.Random) -> dict:
    text = rng.choice(UNKNOWABLE).format(n=rng.randint(10, 1000), name=rng.choice(NAMES), city=rng.choice(CITIES),
                                         date=f"20{rng.randint(30, 60)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}")
    return {"messages": [{"role": "user", "content": text}], "domain": "calibration",
            "verifier": {"type": "abstain"}, "source": "calibration"}


def chat_prompt(rng: random.Random) -> dict:
    return {"messages": [{"role": "user", "content": rng.choice(CHAT_TEMPLATES).format(topic=rng.choice(TOPICS))}],
            "domain": "general_chat", "verifier": {"type": "reward_model"}, "source": "general_chat"}


# answers to the chat prompts: a good one follows the prompt's form and stays on its topic
CHAT_ANSWERS = {
    "Give me three tips for {topic}.": "Here are three tips for {topic}:\n1. Start small and enjoy {topic} at your own pace.\n"
                                      "2. Keep notes on what you like about {topic}.\n3. Share {topic} with a friend.",
    "Explain {topic} to a ten-year-old.": "Imagine you are finding out about {topic} for the first time. {Topic} is something "
                                          "you can see, try and talk about, and people like {topic} because there is always "
                                          "something new to notice.",
    "Write a short poem about {topic}.": "{Topic} in the morning light,\nquiet, simple, calm and bright.\nI think of {topic} "
                                         "all day long,\nand carry it with me like a song.",
    "What are the pros and cons of {topic}?": "Pros of {topic}: it is enjoyable, and it is good for body and mind. "
                                              "Cons of {topic}: it takes time, and it needs some planning.",
    "Suggest a weekend plan involving {topic}.": "Saturday: spend the morning on {topic}, then have lunch nearby. "
                                                 "Sunday: come back to {topic} with a friend and rest in the evening.",
}
CURT_ANSWERS = ["I don't know.", "Maybe.", "That is not something I can help with.", "Ok."]


def chat_answer(template: str, topic: str) -> str:
    return CHAT_ANSWERS[template].format(topic=topic, Topic=topic[0].upper() + topic[1:])


def chat_preference_pair(template: str, topic: str, rng: random.Random) -> dict:
    """A chat prompt, its good answer, and a worse one: off topic, in the wrong form, curt, or repetitive."""
    kind = rng.choice(["off_topic", "wrong_form", "curt", "repetitive"])
    if kind == "off_topic":
        rejected = chat_answer(template, rng.choice([t for t in TOPICS if t != topic]))
    elif kind == "wrong_form":
        rejected = chat_answer(rng.choice([t for t in CHAT_TEMPLATES if t != template]), topic)
    elif kind == "curt":
        rejected = rng.choice(CURT_ANSWERS)
    else:
        rejected = " ".join([topic] * rng.randint(4, 12)) + "."
    return {"messages": [{"role": "user", "content": template.format(topic=topic)}],
            "chosen": {"role": "assistant", "content": chat_answer(template, topic)},
            "rejected": {"role": "assistant", "content": rejected}, "source": f"general_chat/{kind}"}


def with_answer(prompt: dict, answer: str) -> dict:
    return {"messages": prompt["messages"] + [{"role": "assistant", "content": answer}], "source": prompt["source"]}


# ---------------------------------------------------------------- defects for the filter stage
STATED_RESULT = re.compile(r"(\d\s*[-+*/]\s*\d+\s*=\s*)(\d+)\b")


def add_defect(sample: dict, rng: random.Random) -> dict:
    """Break a good sample in one labelled way the filter stage must catch."""
    sample = json.loads(json.dumps(sample))
    last = sample["messages"][-1]
    if sample.get("tools") and any(m.get("tool_calls") for m in sample["messages"]):
        call = next(m for m in sample["messages"] if m.get("tool_calls"))["tool_calls"][0]
        if rng.random() < 0.5:
            call["name"], defect = "delete_database", "unknown_tool"
        else:
            call["arguments"] = {"unexpected": True}
            defect = "bad_arguments"
    elif sample.get("documents"):
        last["content"] = "According to the documents, the answer is 1066."
        defect = "ungrounded"
    elif rng.random() < 0.5:
        last["content"] = last["content"].rstrip(".") + " <|end_of_text|>"
        defect = "template_leak"
    elif STATED_RESULT.search(last["content"]):
        # a miscalculation a rule can catch: the first stated result is off by ten
        last["content"] = STATED_RESULT.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + 10}", last["content"], count=1)
        defect = "wrong_computation"
    else:
        # a wrong final answer only a judge (or a reference) can catch
        last["content"] = last["content"].replace("The answer is", "The answer is 1") if "The answer is" in last["content"] \
            else last["content"] + " 42"
        defect = "wrong_answer"
    sample.setdefault("meta", {})["defect"] = defect
    return sample
