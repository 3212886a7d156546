"""`granite chat CKPT`: talk to a checkpoint in the terminal, tokens streamed as they are generated.

Lines typed (or piped in) are user turns; a few slash commands steer the conversation. Tool calls in
an answer are shown as calls; `/tool RESULT` hands the model a tool result and lets it go on.
The reply goes to stdout, everything else (banner, prompts, tool-call panels) to stderr.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Optional

import typer

from granite_cli import options
from granite_cli.console import console
from granite_cli.errors import BadInput

HELP = "/reset: forget the conversation · /system TEXT: set the system prompt · /tool RESULT: answer a tool call · /exit"
TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def chat_command(
    checkpoint: str = typer.Argument(..., help="A checkpoint (or any local chat model directory with a chat template)."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt."),
    tools: Optional[str] = typer.Option(None, "--tools", help="JSON file with a list of tool specs (JSON-schema functions) the model may call."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Longest answer, in tokens."),
    temperature: float = typer.Option(0.0, "--temperature", help="0: greedy; above 0: sampling at this temperature."),
    seed: int = options.SeedOption,
    device: str = options.DeviceOption,
) -> None:
    """Chat with a checkpoint: type a message, read the streamed answer; /exit (or end of input) quits."""
    from model.generation import LocalEngine, Sampling

    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)  # checks the values first
    tool_specs = load_tools(tools)
    engine = LocalEngine(checkpoint, device=device)
    if not engine.tokenizer.chat_template:
        raise BadInput("the checkpoint's tokenizer has no chat template; chat with an SFT checkpoint", checkpoint)
    interactive = sys.stdin.isatty()
    console.print(f"chatting with [bold]{checkpoint}[/]  ({HELP})")
    messages = [{"role": "system", "content": system}] if system else []
    while True:
        line = read_line(interactive)
        if line is None or line.strip() == "/exit":
            break
        command, _, rest = line.strip().partition(" ")
        if command == "/reset":
            messages = [m for m in messages if m["role"] == "system"]
            continue
        if command == "/system":
            messages = [{"role": "system", "content": rest}] + [m for m in messages if m["role"] != "system"]
            continue
        if command == "/tool":
            messages.append({"role": "tool", "content": rest})
        elif line.strip():
            messages.append({"role": "user", "content": line.rstrip("\n")})
        else:
            continue
        reply = stream_reply(engine, messages, tool_specs, sampling)
        messages.append(assistant_turn(reply))


def load_tools(path: Optional[str]) -> Optional[list[dict]]:
    if path is None:
        return None
    try:
        specs = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BadInput(f"cannot read tool specs: {err}", path) from err
    if not isinstance(specs, list) or not all(isinstance(s, dict) and "name" in s for s in specs):
        raise BadInput("--tools must hold a JSON list of function specs, each with a name", path)
    return specs


def read_line(interactive: bool) -> Optional[str]:
    if interactive:
        try:
            return console.input("[bold cyan]you>[/] ")
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line or None


def stream_reply(engine, messages, tools, sampling) -> str:
    """Generate the assistant's answer, writing each piece to stdout as soon as it is decoded."""
    from model.generation import Request

    pieces = []
    for piece in engine.stream(Request(messages=messages, tools=tools, sampling=sampling)):
        pieces.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    reply = "".join(pieces)
    for call in TOOL_CALL.findall(reply):
        console.print(f"[magenta]tool call[/] {call.strip()}  [dim](answer with /tool RESULT)[/]")
    return reply


def assistant_turn(reply: str) -> dict:
    """The reply as a chat turn: text in content, each well-formed <tool_call> as a structured call."""
    calls = []
    for raw in TOOL_CALL.findall(reply):
        try:
            call = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(call, dict) and isinstance(call.get("name"), str):
            calls.append({"name": call["name"], "arguments": call.get("arguments", {})})
    content = TOOL_CALL.sub("", reply).strip() if calls else reply.strip()
    return {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}
