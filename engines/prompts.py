"""Chat templates and prompt text shared by the language and reward models.

A GGUF carries its chat template (Jinja, as Hugging Face writes it) in the
`tokenizer.chat_template` metadata. It is rendered the way `transformers`
renders it (trim_blocks, lstrip_blocks, loop controls, `raise_exception`,
`tojson`, `strftime_now`) but in an immutable sandbox, because the template
comes from a downloaded file. Models without a template get ChatML.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engines.base import EngineError

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

Message = Mapping[str, str]


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: object, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render_chat(
    template: str | None,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool,
    bos_token: str = "",
    eos_token: str = "",
    model_name: str = "the model",
) -> str:
    """`messages` rendered with `template` (ChatML when None)."""
    try:
        return _compile(template or CHATML_TEMPLATE).render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except (jinja2.TemplateError, TypeError, ValueError, LookupError, AttributeError) as e:
        raise EngineError(f"the chat template of {model_name} cannot render this conversation: {e}.") from None


def system_user(system: str, user: str) -> list[dict[str, str]]:
    """A system turn (left out when empty) and a user turn."""
    turns = [{"role": "system", "content": system}] if system else []
    return turns + [{"role": "user", "content": user}]
