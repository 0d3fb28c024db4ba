"""A chat that outgrows ``max_context`` keeps going: the oldest turns are dropped (never the system
message or the new message), the kept conversation is prefilled again, the model's notice says so
once, and the replies are those of a fresh chat started from the kept messages."""

from __future__ import annotations

import io
from pathlib import Path

import model_helpers as mh
import pytest

from edgert_core.api import ChatSession, Model, load_model
from edgert_core.chat import Conversation, turns_to_drop
from edgert_core.errors import GenerationError

SYSTEM = "You are terse."
CONTEXT = 256
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def chat_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny llama with a tokenizer and a ChatML template."""
    return mh.write_gguf(mh.fixture("tiny_llama"), tmp_path_factory.mktemp("chat") / "c.gguf")


def model_at(path: Path, notices: list[str] | None = None, max_context: int = CONTEXT) -> Model:
    return load_model(path, backend="numpy", max_context=max_context,
                      notify=None if notices is None else notices.append)


def context_notices(notices: list[str]) -> list[str]:
    return [n for n in notices if "outgrew the context" in n]


def test_a_long_chat_drops_old_turns_keeps_the_system_message_and_says_so_once(
    chat_gguf: Path,
) -> None:
    notices: list[str] = []
    model = model_at(chat_gguf, notices)
    session = model.chat(system=SYSTEM)
    transcript: list[dict[str, str]] = []  # every message ever sent or received
    room = CONTEXT - MAX_TOKENS
    trims = 0
    for i in range(30):
        message = f"q{i}"
        gen = session.send(message, max_tokens=MAX_TOKENS)
        kept = list(session.conversation.messages)  # what the model is asked with, before the reply
        transcript.append({"role": "user", "content": message})
        assert kept == transcript[-len(kept):] and kept[-1]["content"] == message
        assert kept[0]["role"] == "user"  # whole turns go
        gen.result()
        transcript.append({"role": "assistant", "content": gen.text or ""})
        s = gen.stats
        assert gen.ids and s.stop_reason in ("max_tokens", "eos")
        assert s.prompt_tokens <= room  # a full reply always had room
        assert session.conversation.system == SYSTEM
        assert session.prompt_text().startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n")
        if session.last_dropped_turns:
            trims += 1
            # cut well below the limit, so the following turns reuse the cache
            assert s.prompt_tokens <= room * ChatSession.TRIM_TARGET
            assert s.reused_tokens < s.prompt_tokens // 2  # the kept turns were prefilled again
            fresh = model_at(chat_gguf).chat(system=SYSTEM, history=kept[:-1])
            again = fresh.send(message, max_tokens=MAX_TOKENS).result()
            assert again.stats.prompt_tokens == s.prompt_tokens
            assert again.ids == gen.ids
            assert fresh.last_dropped_turns == 0
        elif i > 0:
            assert s.reused_tokens > 0  # the conversation so far stayed cached
    assert trims >= 3 and session.dropped_turns >= trims
    assert len(session.conversation.messages) < len(transcript)
    assert len(context_notices(notices)) == 1
    assert str(CONTEXT) in context_notices(notices)[0]


def test_a_reply_that_reaches_the_context_end_stops_there_and_the_chat_goes_on(
    chat_gguf: Path,
) -> None:
    model = model_at(chat_gguf, max_context=128)
    session = model.chat(system=SYSTEM)
    first = session.send("hello", max_tokens=500).result()
    assert first.stats.stop_reason == "max_context"
    assert first.stats.prompt_tokens + len(first.ids) == 128 + 1  # the last one is not cached
    assert session.conversation.messages[-1] == {"role": "assistant", "content": first.text}
    second = session.send("and now?", max_tokens=500).result()
    assert session.last_dropped_turns == 1
    assert [m["content"] for m in session.conversation.messages[:1]] == ["and now?"]
    assert second.ids and second.stats.stop_reason in ("max_context", "eos")
    # half the context was kept free for the reply
    assert second.stats.prompt_tokens <= 64


def test_no_room_for_the_system_message_and_the_message_is_one_clear_error(
    chat_gguf: Path,
) -> None:
    model = model_at(chat_gguf, max_context=64)
    session = model.chat(system="Be brief. " * 20)
    with pytest.raises(GenerationError, match=r"system message.*raise --max-context") as err:
        session.send("hi", max_tokens=4)
    assert str(err.value).count(".") >= 1 and "\n" not in str(err.value)
    assert session.conversation.messages == []

    session = model.chat()
    session.send("hi", max_tokens=4).result()
    before = list(session.conversation.messages)
    with pytest.raises(GenerationError, match="shorten the message"):
        session.send("x" * 200, max_tokens=4)
    assert session.conversation.messages == before and session.dropped_turns == 0
    assert session.send("ok", max_tokens=4).result().ids  # still usable


def test_an_unfinished_reply_joins_the_history_at_the_next_message(chat_gguf: Path) -> None:
    model = model_at(chat_gguf)
    session = model.chat()
    gen = session.send("hi", max_tokens=8)
    it = iter(gen)
    next(it), next(it)
    partial = gen.text
    second = session.send("more", max_tokens=4).result()
    assert gen.finished and gen.stats.stop_reason == "stopped" and len(gen.ids) == 2
    assert [m["role"] for m in session.conversation.messages] == ["user", "assistant"] * 2
    assert session.conversation.messages[1]["content"] == partial
    assert second.ids


def test_history_must_be_user_and_assistant_messages(chat_gguf: Path) -> None:
    with pytest.raises(GenerationError, match="system="):
        model_at(chat_gguf).chat(history=[{"role": "system", "content": "x"}])


def test_turns_to_drop() -> None:
    lengths = [100, 80, 60, 40, 20]  # prompt length with n turns dropped
    assert turns_to_drop(4, lengths.__getitem__, 100, 50) == 0
    assert turns_to_drop(4, lengths.__getitem__, 90, 45) == 3  # down to the target
    assert turns_to_drop(4, lengths.__getitem__, 90, 10) == 1  # target unreachable: just fit
    assert turns_to_drop(4, lengths.__getitem__, 10, 5) == 4  # nothing fits: drop all
    assert turns_to_drop(0, lengths.__getitem__, 90, 45) == 0


def test_without_oldest_turns_keeps_whole_turns_and_the_last() -> None:
    c = Conversation("sys")
    for role, text in [("assistant", "greeting"), ("user", "a"), ("assistant", "A"),
                       ("user", "b"), ("assistant", "B"), ("user", "c")]:
        c.add(role, text)  # type: ignore[arg-type]
    assert [m["content"] for m in c.without_oldest_turns(1).messages] == ["b", "B", "c"]
    assert [m["content"] for m in c.without_oldest_turns(9).messages] == ["c"]
    assert c.without_oldest_turns(0).messages == c.messages
    assert c.without_oldest_turns(2).all_messages()[0] == {"role": "system", "content": "sys"}


def test_cli_chat_keeps_going_past_the_context_and_says_so_once(
    chat_gguf: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = "".join(f"question {i}\n" for i in range(20))
    code, out, err = mh.run_cli(["chat", "--model", str(chat_gguf), "--backend", "numpy",
                                 "--max-context", "160", "--max-tokens", "6", "--system", SYSTEM],
                                monkeypatch, capsys, stdin=io.StringIO(lines))
    assert code == 0, err
    assert "error" not in err.lower() and "Traceback" not in err
    assert err.count("outgrew the context of 160 tokens") == 1
    assert out.count("\n") == 20  # one reply per question
