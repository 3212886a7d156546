"""Chat samples (docs/design.md, contract 2): the one normalisation and schema check every reader applies.

filter, sft, eval and rl all read chat samples; they accept the same shapes and refuse the same
mistakes. Two shapes are accepted and turned into ours once, on reading:
- ours: tools as function specs `{"name", "description", "parameters"}`, tool calls as
  `{"name", "arguments"}` with arguments an object (or a JSON string of one);
- OpenAI's, the most common in public SFT data: tools as `{"type": "function", "function": {...}}`,
  tool calls as `{"id", "type": "function", "function": {"name", "arguments": "JSON string"}}`,
  and `"content": null` on an assistant turn that only calls tools (read as "").
"""

from __future__ import annotations

import json

ROLES = ("system", "user", "assistant", "tool")


def normalize_sample(sample: dict) -> dict:
    """The sample in our shape: OpenAI-style tools and tool calls unwrapped, string arguments parsed where they parse.

    Anything malformed is left as it is for `schema_problems` to name."""
    out = dict(sample)
    if isinstance(sample.get("tools"), list):
        out["tools"] = [_unwrap_function(tool) for tool in sample["tools"]]
    if isinstance(sample.get("messages"), list):
        out["messages"] = [_normalize_message(m) if isinstance(m, dict) else m for m in sample["messages"]]
    return out


def _unwrap_function(item):
    if isinstance(item, dict) and item.get("type") == "function" and isinstance(item.get("function"), dict):
        return item["function"]
    return item


def _normalize_message(message: dict) -> dict:
    if "content" in message and message["content"] is None:  # OpenAI's assistant turn that only calls tools
        message = {**message, "content": ""}
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return message
    normalized = []
    for call in calls:
        call = _unwrap_function(call)
        if isinstance(call, dict) and isinstance(call.get("arguments"), str):
            try:
                call = {**call, "arguments": json.loads(call["arguments"])}
            except json.JSONDecodeError:
                pass  # schema_problems names it
        normalized.append(call)
    return {**message, "tool_calls": normalized}


def tool_call_arguments(call: dict):
    """A tool call's arguments as an object: contract 2 accepts an object or a JSON string of one."""
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):
        return json.loads(arguments)
    return arguments


def schema_problems(sample: dict, prompt: bool = False) -> list[str]:
    """Roles, their order, a non-empty final assistant turn, tool results only after tool calls, well-formed calls.

    prompt=True checks a prompt (eval's and rl's): it ends before the answer, with a user or tool turn."""
    messages = sample.get("messages")
    if not isinstance(messages, list) or not messages:
        return ["'messages' must be a non-empty list"]
    problems = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return [f"messages[{i}] has no valid role (one of {', '.join(ROLES)})"]
        if not isinstance(m.get("content", ""), str):
            problems.append(f"messages[{i}].content is not a string")
        if m["role"] == "system" and i != 0:
            problems.append(f"messages[{i}] is a system turn after the start")
    turns = [m["role"] for m in messages if m["role"] != "system"]
    if not turns or turns[0] != "user":
        problems.append("the conversation does not start with a user turn")
    if turns and turns[-1] != "assistant" and not prompt:
        problems.append(f"the conversation ends with a {turns[-1]} turn, not an assistant turn")
    if turns and turns[-1] == "assistant" and prompt:
        problems.append("the prompt ends with an assistant turn: a prompt ends before the answer")
    for i in range(1, len(messages)):
        before, now = messages[i - 1], messages[i]
        if now["role"] == "tool" and not (before["role"] == "tool" or before.get("tool_calls")):
            problems.append(f"messages[{i}] is a tool result that follows no tool call")
        if before.get("tool_calls") and now["role"] != "tool":
            problems.append(f"messages[{i - 1}] calls tools but no tool result follows")
        if now["role"] == before["role"] and now["role"] in ("user", "assistant"):
            problems.append(f"messages[{i - 1}] and messages[{i}] are both {now['role']} turns")
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and not (str(m.get("content") or "").strip() or m.get("tool_calls")):
            problems.append(f"messages[{i}] is an empty assistant turn")
        for j, call in enumerate(m.get("tool_calls") or []):
            problems.extend(_call_problems(call, f"messages[{i}].tool_calls[{j}]"))
    if "tools" in sample and not (isinstance(sample["tools"], list) and all(isinstance(t, dict) and "name" in t for t in sample["tools"])):
        problems.append("'tools' must be a list of function specs with a name")
    if "documents" in sample and not (isinstance(sample["documents"], list)
                                      and all(isinstance(d, dict) and isinstance(d.get("text"), str) for d in sample["documents"])):
        problems.append("'documents' must be a list of objects with a string 'text'")
    return problems


def _call_problems(call, where: str) -> list[str]:
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return [f"{where} has no name"]
    try:
        arguments = tool_call_arguments(call)
    except json.JSONDecodeError as err:
        return [f"{where} ({call['name']}): arguments do not parse as JSON ({err.msg})"]
    return [] if isinstance(arguments, dict) else [f"{where} ({call['name']}): arguments are not a JSON object"]
