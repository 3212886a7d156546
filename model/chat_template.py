"""The Granite chat format as a Jinja template, saved with every tokenizer and checkpoint.

Each turn is `<|start_of_role|>ROLE<|end_of_role|>CONTENT<|end_of_text|>` followed by a newline.
Tools are listed as JSON inside `<tools></tools>` in the system turn, retrieved documents inside
`<documents></documents>`, and an assistant's tool calls are `<tool_call>{...}</tool_call>` lines.
An assistant turn (content, tool calls, end-of-turn token) sits inside `{% generation %}`, so
`apply_chat_template(..., return_assistant_tokens_mask=True)` (and TRL's assistant-only loss) marks
exactly the tokens `granite sft` trains on.
"""

SPECIAL_TOKENS = ["<|end_of_text|>", "<|pad|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                  "<|start_of_role|>", "<|end_of_role|>"]
EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|pad|>"

GRANITE_CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='') -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}{%- set ns.system = messages[0]['content'] -%}"
    "{%- set messages = messages[1:] -%}{%- endif -%}"
    "{%- if tools -%}"
    "{%- set ns.system = (ns.system ~ '\n\n' if ns.system else '') ~ 'You can call these tools. To call one, answer with "
    "<tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>.\n<tools>' -%}"
    "{%- for tool in tools -%}{%- set ns.system = ns.system ~ '\n' ~ (tool | tojson) -%}{%- endfor -%}"
    "{%- set ns.system = ns.system ~ '\n</tools>' -%}"
    "{%- endif -%}"
    "{%- if documents -%}"
    "{%- set ns.system = (ns.system ~ '\n\n' if ns.system else '') ~ 'Answer using only these documents.\n<documents>' -%}"
    "{%- for doc in documents -%}{%- set ns.system = ns.system ~ '\n' ~ (doc | tojson) -%}{%- endfor -%}"
    "{%- set ns.system = ns.system ~ '\n</documents>' -%}"
    "{%- endif -%}"
    "{%- if ns.system -%}<|start_of_role|>system<|end_of_role|>{{ ns.system }}<|end_of_text|>{{ '\\n' }}{%- endif -%}"
    "{%- for message in messages -%}"
    "<|start_of_role|>{{ message['role'] }}<|end_of_role|>"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] }}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{{ '\n' if (loop.first and message['content']) or not loop.first else '' }}<tool_call>{{ {'name': call['name'], 'arguments': call['arguments']} | tojson }}</tool_call>"
    "{%- endfor -%}"
    "<|end_of_text|>{% endgeneration %}"
    "{%- else -%}"
    "{{ message['content'] }}<|end_of_text|>"
    "{%- endif -%}"
    "{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start_of_role|>assistant<|end_of_role|>{%- endif -%}"
)
