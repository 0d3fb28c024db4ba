"""OpenAI's request and response shapes, checked and built here (no web framework in this module).

:func:`parse_chat` and :func:`parse_completion` turn a decoded JSON body into a
:class:`GenerationRequest` (prompt token ids and sampling options) or raise an
:class:`~edgert_core.serve.errors.APIError` naming the parameter. A chat request's prompt is the
model's chat template applied to the messages by :meth:`edgert_core.api.Model.chat`, exactly as
``edge-rt run --chat`` and ``edge-rt chat`` apply it; a completion's prompt is tokenized as
``edge-rt run --prompt`` does. The model is fixed when the server starts: nothing in a request
opens a file.

Every request parameter is in one of four tables: parsed (:data:`CHAT_PARAMS`,
:data:`COMPLETION_PARAMS`), accepted and ignored because it cannot change the output
(:data:`IGNORED_PARAMS`), accepted only at its "off" value (:data:`OFF_VALUES`); anything else is
a 400 ``unknown_parameter``, as OpenAI answers a misspelt one.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from edgert_core.serve.errors import APIError, invalid

if TYPE_CHECKING:
    from edgert_core.api import Model

Kind = Literal["chat", "completion"]

MAX_STOP = 4  # OpenAI's limit on stop sequences
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions (chat: until the context is full)

CHAT_PARAMS = frozenset({"model", "messages", "max_tokens", "max_completion_tokens", "temperature",
                         "top_p", "stop", "seed", "stream", "stream_options", "n"})
COMPLETION_PARAMS = frozenset({"model", "prompt", "max_tokens", "temperature", "top_p", "stop",
                               "seed", "stream", "stream_options", "n"})
IGNORED_PARAMS = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls"})


def _off_number(v: Any) -> bool:
    return v is None or (not isinstance(v, bool) and isinstance(v, int | float) and v == 0)


#: Parameters this server does not implement, accepted only at the value that turns them off.
OFF_VALUES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "presence_penalty": (_off_number, "0"),
    "frequency_penalty": (_off_number, "0"),
    "logprobs": (lambda v: v is None or v is False, "false or null"),
    "top_logprobs": (_off_number, "0 or null"),
    "logit_bias": (lambda v: v is None or v == {}, "null or {}"),
    "response_format": (lambda v: v is None or v == {"type": "text"}, '{"type": "text"}'),
    "tools": (lambda v: v is None or v == [], "null or []"),
    "tool_choice": (lambda v: v is None or v == "none", '"none"'),
    "echo": (lambda v: v is None or v is False, "false"),
    "best_of": (lambda v: v is None or (v == 1 and not isinstance(v, bool)), "1"),
    "suffix": (lambda v: v is None, "null"),
}


@dataclass(frozen=True)
class GenerationRequest:
    """One request for the engine: prompt ids and the options of its generation."""

    kind: Kind
    model: str  # the model id the response names
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                       (list, "array"), (dict, "object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _typed(body: dict[str, Any], name: str, kinds: tuple[type, ...], what: str) -> Any:
    """``body[name]`` when present and not null, checked to be one of ``kinds`` (a JSON boolean is
    not an integer here); ``None`` when absent or null."""
    value = body.get(name)
    if value is None:
        return None
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise invalid(f"Invalid type for '{name}': expected {what}, but got {_json_type(value)}.",
                      name, "invalid_type")
    if isinstance(value, float) and not math.isfinite(value):
        raise invalid(f"Invalid value for '{name}': it must be a finite number.", name)
    return value


def _check_params(body: dict[str, Any], known: frozenset[str]) -> None:
    for name in body:
        if name in known or name in IGNORED_PARAMS:
            continue
        rule = OFF_VALUES.get(name)
        if rule is None:
            raise invalid(f"Unrecognized request argument supplied: {name}.", name, "unknown_parameter")
        is_off, off = rule
        if not is_off(body[name]):
            raise invalid(f"'{name}' is not supported by this server; leave it out or set it to {off}.",
                          name, "unsupported_parameter")


def _model_id(body: dict[str, Any], served: Sequence[str]) -> str:
    name = _typed(body, "model", (str,), "a string")
    if name is None:
        raise invalid("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    if name not in served:
        raise APIError(404, f"The model '{name}' does not exist; this server serves '{served[0]}' "
                       "(see GET /v1/models).", param="model", code="model_not_found")
    return served[0]


def _max_tokens(body: dict[str, Any], names: Sequence[str]) -> int | None:
    for name in names:  # the first one given wins (max_completion_tokens over max_tokens)
        value = _typed(body, name, (int,), "an integer")
        if value is not None:
            if value < 1:
                raise invalid(f"Invalid value for '{name}': it must be at least 1, got {value}.", name)
            return int(value)
    return None


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise invalid(f"Invalid type for 'stop': expected a string or an array of strings, but got "
                      f"{_json_type(value)}.", "stop", "invalid_type")
    if len(items) > MAX_STOP:
        raise invalid(f"Invalid value for 'stop': at most {MAX_STOP} sequences, got {len(items)}.", "stop")
    if any(s == "" for s in items):
        raise invalid("Invalid value for 'stop': a stop sequence must not be empty.", "stop")
    return tuple(items)


def _common(body: dict[str, Any]) -> dict[str, Any]:
    """The options chat and completions share: sampling, stop, stream, n."""
    n = _typed(body, "n", (int,), "an integer")
    if n is not None and n != 1:
        raise invalid(f"n must be 1: this server generates one choice per request, got n={n}.", "n",
                      "unsupported_value")
    temperature = _typed(body, "temperature", (int, float), "a number")
    if temperature is not None and not 0 <= temperature <= 2:
        raise invalid(f"Invalid value for 'temperature': it must be in [0, 2], got {temperature}.",
                      "temperature")
    top_p = _typed(body, "top_p", (int, float), "a number")
    if top_p is not None and not 0 < top_p <= 1:
        raise invalid(f"Invalid value for 'top_p': it must be in (0, 1], got {top_p}.", "top_p")
    seed = _typed(body, "seed", (int,), "an integer")
    if seed is not None and seed < 0:
        raise invalid(f"Invalid value for 'seed': it must be 0 or more, got {seed}.", "seed")
    stream = _typed(body, "stream", (bool,), "a boolean")
    options = _typed(body, "stream_options", (dict,), "an object") or {}
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise invalid("Invalid type for 'stream_options.include_usage': expected a boolean, but got "
                      f"{_json_type(include_usage)}.", "stream_options.include_usage", "invalid_type")
    return {
        "temperature": 0.0 if temperature is None else float(temperature),
        "top_p": 1.0 if top_p is None else float(top_p),
        "seed": seed,
        "stop": _stop(body),
        "stream": bool(stream),
        "include_usage": include_usage,
    }


def _fit(model: Model, ids: list[int], param: str, max_tokens: int | None) -> int:
    """The prompt's room in the context: a 400 with the figures when there is none; the tokens to
    generate (``max_tokens`` or, when not given, up to the end of the context; a generation that
    reaches the end of the context stops there with finish_reason ``length``)."""
    context = model.context.max_context
    if len(ids) >= context:
        raise invalid(
            f"This model's maximum context length is {context} tokens, but the {param} has "
            f"{len(ids)} tokens, which leaves no room to generate; shorten the {param} or restart "
            "the server with a larger --max-context.", param, "context_length_exceeded")
    return max_tokens if max_tokens is not None else context - len(ids)


def _content(message: dict[str, Any], i: int) -> str:
    """A message's text: a string, or the text parts of an array of content parts."""
    content = message.get("content")
    where = f"messages[{i}].content"
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(
                    part.get("text"), str):
                raise invalid(f"Invalid value for '{where}[{j}]': only text parts "
                              '({"type": "text", "text": ...}) are supported.', f"{where}[{j}]")
            texts.append(part["text"])
        return "".join(texts)
    if content is None:
        raise invalid(f"Missing required parameter: '{where}'.", where, "missing_required_parameter")
    raise invalid(f"Invalid type for '{where}': expected a string or an array of content parts, but "
                  f"got {_json_type(content)}.", where, "invalid_type")


def chat_prompt(model: Model, messages: Any) -> list[int]:
    """The prompt ids of a chat: the model's chat template applied to ``messages`` (a system message
    first, then user and assistant messages, the last one from the user) through
    :meth:`Model.chat <edgert_core.api.Model.chat>`, the template code ``edge-rt run --chat`` uses."""
    if messages is None:
        raise invalid("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise invalid(f"Invalid type for 'messages': expected an array, but got {_json_type(messages)}.",
                      "messages", "invalid_type")
    if not messages:
        raise invalid("Invalid value for 'messages': give at least one message.", "messages")
    system: str | None = None
    history: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"Invalid type for 'messages[{i}]': expected an object, but got "
                          f"{_json_type(message)}.", f"messages[{i}]", "invalid_type")
        role = message.get("role")
        where = f"messages[{i}].role"
        if role is None:
            raise invalid(f"Missing required parameter: '{where}'.", where, "missing_required_parameter")
        if role in ("system", "developer"):
            if i != 0:
                raise invalid(f"Invalid value for '{where}': a {role} message is supported only as "
                              "the first message.", where)
            system = _content(message, i)
        elif role in ("user", "assistant"):
            history.append({"role": role, "content": _content(message, i)})
        else:
            raise invalid(f"Invalid value for '{where}': {role!r} is not supported; use system, "
                          "user or assistant.", where)
    if not history or history[-1]["role"] != "user":
        raise invalid("Invalid value for 'messages': the last message must be from the user.", "messages")
    return model.encode(model.chat(system=system, history=history).prompt_text())


def completion_prompt(model: Model, prompt: Any) -> list[int]:
    """The prompt ids of a completion: text (tokenized as ``edge-rt run --prompt`` does) or token
    ids, alone or as the single element of an array."""
    if prompt is None:
        raise invalid("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) and not isinstance(p, bool)
                                                   for p in prompt):
        ids = [int(p) for p in prompt]
    elif isinstance(prompt, list) and len(prompt) == 1:
        return completion_prompt(model, prompt[0])
    elif isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str | list) for p in prompt):
        raise invalid(f"Invalid value for 'prompt': this server completes one prompt per request, got "
                      f"{len(prompt)}.", "prompt", "unsupported_value")
    elif isinstance(prompt, str):
        if not prompt:
            raise invalid("Invalid value for 'prompt': the prompt is empty.", "prompt")
        return model.encode(prompt)
    else:
        raise invalid("Invalid type for 'prompt': expected a string, an array of token ids, or an "
                      f"array of one of those, but got {_json_type(prompt)}.", "prompt", "invalid_type")
    vocab = model.config.dims.vocab
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise invalid(f"Invalid value for 'prompt': token id {bad[0]} is outside the model's vocabulary "
                      f"of {vocab} ids.", "prompt")
    return ids


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid(f"The request body must be a JSON object, got {_json_type(body)}.", None,
                      "invalid_type")
    return body


def parse_chat(body: Any, model: Model, served: Sequence[str]) -> GenerationRequest:
    """A ``POST /v1/chat/completions`` body as a request for the engine."""
    body = _object(body)
    _check_params(body, CHAT_PARAMS)
    model_id = _model_id(body, served)
    common = _common(body)
    max_tokens = _max_tokens(body, ("max_completion_tokens", "max_tokens"))
    ids = chat_prompt(model, body.get("messages"))
    return GenerationRequest("chat", model_id, ids, _fit(model, ids, "messages", max_tokens), **common)


def parse_completion(body: Any, model: Model, served: Sequence[str]) -> GenerationRequest:
    """A ``POST /v1/completions`` body as a request for the engine."""
    body = _object(body)
    _check_params(body, COMPLETION_PARAMS)
    model_id = _model_id(body, served)
    common = _common(body)
    max_tokens = _max_tokens(body, ("max_tokens",))
    ids = completion_prompt(model, body.get("prompt"))
    limit = COMPLETION_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    return GenerationRequest("completion", model_id, ids, _fit(model, ids, "prompt", limit), **common)


# -- responses ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


class ResponseBuilder:
    """The response objects of one request (one id and creation time for all its chunks)."""

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        prefix = "chatcmpl" if request.kind == "chat" else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.request.model,
                "choices": choices}

    def complete(self, text: str, finish_reason: str, usage: Usage) -> dict[str, Any]:
        """The whole response of a request without ``stream``."""
        if self.request.kind == "chat":
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "logprobs": None, "finish_reason": finish_reason}
            out = self._envelope("chat.completion", [choice])
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            out = self._envelope("text_completion", [choice])
        out["usage"] = usage.as_dict()
        return out

    def chunk(self, text: str | None, finish_reason: str | None = None, *,
              first: bool = False) -> dict[str, Any]:
        """One streamed chunk: ``text`` (``None``: none, in the last chunk) and, in the last chunk,
        the finish reason; a chat's first chunk carries the role."""
        if self.request.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None,
                                      "finish_reason": finish_reason}
            out = self._envelope("chat.completion.chunk", [choice])
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            out = self._envelope("text_completion", [choice])
        if self.request.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        """The extra last chunk of ``stream_options: {"include_usage": true}``: no choices."""
        obj = "chat.completion.chunk" if self.request.kind == "chat" else "text_completion"
        out = self._envelope(obj, [])
        out["usage"] = usage.as_dict()
        return out
