"""Chat templates for model files that carry none.

Most GGUF files hold their template (`tokenizer.chat_template`); some conversions drop it (the
Gemma 3 270M build is one). For those families the turn format is fixed and documented, so the
engine falls back to it here rather than refusing chat requests. `--chat-template FILE` overrides
both.
"""
from __future__ import annotations

import os

# Gemma's turn format: roles "user" and "model"; a system message is folded into the first user
# turn, as Gemma's own template does (the model has no system role). BOS is not written here: the
# tokenizer adds it (tokenizer.ggml.add_bos_token).
GEMMA = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] + '\\n\\n' -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' }}"
    "{%- if loop.first and system -%}{{ system }}{%- endif -%}"
    "{{ message['content'] }}{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

BUILTIN: dict[str, str] = {"gemma": GEMMA, "gemma2": GEMMA, "gemma3": GEMMA}


def chat_template(file_template: str, architecture: str, override_path: str = "") -> str:
    """The template to serve: `override_path`'s contents, else the file's own, else the built-in
    one of the architecture's family, else "" (prompts only)."""
    if override_path:
        with open(os.path.expanduser(override_path), encoding="utf-8") as fh:
            return fh.read()
    return file_template or BUILTIN.get(architecture, "")
