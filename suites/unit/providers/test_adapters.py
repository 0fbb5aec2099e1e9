"""app/creditgate/providers/{openai,anthropic}.py: each protocol's request, answer and stream events."""

from __future__ import annotations

import json

import pytest
from httpx_sse import ServerSentEvent

from creditgate.providers import ADAPTERS
from creditgate.providers.base import ChatCall, Delta, Malformed, Turn, Usage

CALL = ChatCall(
    protocol="openai",
    native={"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
    system="sys",
    turns=(Turn("user", "hi"),),
    max_tokens=10,
)


def sse(data: object, event: str = "message") -> ServerSentEvent:
    return ServerSentEvent(event=event, data=data if isinstance(data, str) else json.dumps(data))


def test_same_protocol_passes_the_clients_body_through() -> None:
    path, payload = ADAPTERS["openai"].chat_request(CALL, model="up", stream=True)
    assert path == "/chat/completions"
    assert payload["tools"] == [{"type": "function"}]  # what the gateway does not model survives
    assert (payload["model"], payload["max_tokens"], payload["stream_options"]) == ("up", 10, {"include_usage": True})


def test_other_protocol_is_translated() -> None:
    path, payload = ADAPTERS["anthropic"].chat_request(CALL, model="claude", stream=False)
    assert path == "/messages"
    assert payload == {
        "messages": [{"role": "user", "content": "hi"}],
        "system": "sys",
        "model": "claude",
        "max_tokens": 10,
        "stream": False,
    }
    assert ADAPTERS["openai"].count_request(CALL, model="x") is None
    assert ADAPTERS["anthropic"].images_request({}, model="x") is None


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("openai", {"choices": []}),
        ("openai", {"id": "x", "created": 1, "model": "m", "choices": [{"index": 0}]}),
        ("anthropic", {"id": "x", "model": "m", "content": []}),
        ("anthropic", ["not", "a", "message"]),
    ],
)
def test_malformed_answers_are_refused(kind: str, body: object) -> None:
    with pytest.raises(Malformed):
        ADAPTERS[kind].parse_completion(body)  # type: ignore[index]


def test_anthropic_stream_usage_joins_message_start_and_message_delta() -> None:
    parser = ADAPTERS["anthropic"].stream_parser()
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 6000, "output_tokens": 1}}}
    deltas = [
        *parser.feed(sse(start)),
        *parser.feed(sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a"}})),
        *parser.feed(sse("not json")),
        *parser.feed(
            sse({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 3}})
        ),
        *parser.feed(sse({"type": "message_stop"})),
    ]
    assert [(d.text, d.usage, d.finish, d.done) for d in deltas] == [
        ("", None, None, False),
        ("a", None, None, False),
        ("", Usage(6000, 3), "length", False),
        ("", None, None, True),
    ]


def test_openai_stream_parser_reads_text_usage_and_done() -> None:
    parser = ADAPTERS["openai"].stream_parser()
    chunk = {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "length"}]}
    usage = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}}
    assert parser.feed(sse(chunk)) == [Delta(text="hi", finish="length")]
    assert parser.feed(sse(usage)) == [Delta(usage=Usage(5, 7))]
    assert parser.feed(sse("[DONE]")) == [Delta(done=True)]
    assert parser.feed(sse("[1]")) == []


def test_translated_anthropic_stream_ends_with_the_billed_usage() -> None:
    call = ChatCall(protocol="anthropic", native={}, system="", turns=(), max_tokens=5)
    writer = ADAPTERS["anthropic"].stream_writer(model="m", call=call, upstream="openai", prompt_estimate=99)
    start = writer.start().decode()
    assert '"input_tokens": 99' in start
    writer.write(Delta(text="x", finish="length"))
    tail = [json.loads(line[6:]) for line in writer.finish(Usage(7, 1), complete=True).decode().splitlines()
            if line.startswith("data: ")]  # fmt: skip
    delta = next(e for e in tail if e["type"] == "message_delta")
    assert delta["usage"] == {"input_tokens": 7, "output_tokens": 1}
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert tail[-1] == {"type": "message_stop"}
    assert b'"type": "error"' in writer.finish(Usage(7, 1), complete=False)
