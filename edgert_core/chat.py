"""Chat: a model's Jinja chat template applied to a conversation, and the conversation's state.

Templates run in Jinja's sandbox with the conventions of Hugging Face chat templates (``messages``,
``add_generation_prompt``, ``bos_token``/``eos_token``, ``raise_exception``, ``tojson``, trimmed
blocks). A model without a template gets ChatML.

A conversation that outgrows the context drops its oldest turns (a user message and the replies after
it), never the system message or the newest user message: :func:`turns_to_drop` picks how many, from
the token count of the prompt each choice would give.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from edgert_core.errors import ModelError

if TYPE_CHECKING:  # jinja2 is imported when a template is applied: it costs ~8 MB of RSS otherwise
    from jinja2.sandbox import ImmutableSandboxedEnvironment

Role = Literal["system", "user", "assistant"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise(message: str) -> None:
    raise ModelError(f"The chat template refused the conversation: {message}")


def _environment() -> ImmutableSandboxedEnvironment:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = _raise
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent)
    return env


def apply_chat_template(
    template: str | None,
    messages: list[dict[str, str]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """The prompt text for ``messages`` (``[{"role": ..., "content": ...}]``)."""
    import jinja2

    source = template or CHATML_TEMPLATE
    try:
        compiled = _environment().from_string(source)
        return compiled.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except jinja2.TemplateError as exc:
        raise ModelError(f"The model's chat template is invalid: {exc}.") from None


@dataclass
class Conversation:
    """The messages of one chat, oldest first."""

    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)

    def add(self, role: Role, content: str) -> None:
        self.messages.append({"role": role, "content": content})

    def turn_starts(self) -> list[int]:
        """Where each turn begins in :attr:`messages`: the index of every user message."""
        return [i for i, m in enumerate(self.messages) if m["role"] == "user"]

    def without_oldest_turns(self, n: int) -> Conversation:
        """A copy without the ``n`` oldest turns (and anything before the first turn); the system
        message and the last turn always stay."""
        starts = self.turn_starts()
        if not starts:
            return Conversation(self.system, list(self.messages))
        cut = starts[min(n, len(starts) - 1)] if n > 0 else 0
        return Conversation(self.system, list(self.messages[cut:]))

    def all_messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def prompt(self, template: str | None, **tokens: Any) -> str:
        """The prompt that asks the model for the assistant's next message."""
        return apply_chat_template(template, self.all_messages(), add_generation_prompt=True, **tokens)


def turns_to_drop(droppable: int, prompt_tokens: Callable[[int], int], room: int,
                  target: int) -> int:
    """How many of the ``droppable`` oldest turns to drop so the prompt fits.

    ``prompt_tokens(n)`` is the prompt's length without the ``n`` oldest turns (it does not grow as
    ``n`` grows). Nothing is dropped while the whole prompt fits in ``room`` tokens; otherwise the
    fewest turns that bring it down to ``target`` (at most ``room``: dropping more than needed now
    lets the next turns reuse the cached conversation instead of each re-reading all of it), or to
    ``room`` if ``target`` cannot be reached, or all of them.
    """
    if prompt_tokens(0) <= room:
        return 0
    for goal in (min(target, room), room):
        lo, hi = 1, droppable  # the smallest n in [lo, hi] with prompt_tokens(n) <= goal
        if hi < lo or prompt_tokens(hi) > goal:
            continue
        while lo < hi:
            mid = (lo + hi) // 2
            if prompt_tokens(mid) <= goal:
                hi = mid
            else:
                lo = mid + 1
        return lo
    return droppable
