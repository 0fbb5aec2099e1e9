"""Every SDK call of the client matrix, run by whichever Python has the SDK version under test.

Standalone on purpose (only ``openai`` or ``anthropic`` imported): the contract suite runs it with the
test venv's Python (the latest SDKs) and with a venv holding the lowest versions we declare.
``python sdk_calls.py '{"sdk": "openai", "base_url": ..., "key": ..., "poor_key": ..., "model": ...}'``
prints one JSON object: the SDK version, what each call reported, and each refusal's class and code.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any


def _openai(cfg: dict[str, Any]) -> dict[str, Any]:
    import openai

    base, model = cfg["base_url"] + "/v1", cfg["model"]
    messages = [{"role": "user", "content": "hi from the matrix"}]
    sync = openai.OpenAI(base_url=base, api_key=cfg["key"], max_retries=0)
    calls: list[dict[str, Any]] = []

    done = sync.chat.completions.create(model=model, messages=messages, max_tokens=50)  # type: ignore[arg-type]
    assert done.usage is not None
    calls.append(
        {
            "name": "sync",
            "text": done.choices[0].message.content,
            "usage": [done.usage.prompt_tokens, done.usage.completion_tokens],
        }
    )

    def streamed(chunks: Any) -> tuple[str, list[int]]:
        text, usage = "", None
        for chunk in chunks:
            text += "".join(c.delta.content or "" for c in chunk.choices)
            usage = chunk.usage or usage
        return text, [usage.prompt_tokens, usage.completion_tokens]

    stream = sync.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    text, usage = streamed(stream)
    calls.append({"name": "sync stream", "text": text, "usage": usage})

    async def run_async() -> None:
        api = openai.AsyncOpenAI(base_url=base, api_key=cfg["key"], max_retries=0)
        done = await api.chat.completions.create(model=model, messages=messages, max_tokens=50)  # type: ignore[arg-type]
        assert done.usage is not None
        calls.append(
            {
                "name": "async",
                "text": done.choices[0].message.content,
                "usage": [done.usage.prompt_tokens, done.usage.completion_tokens],
            }
        )
        stream = await api.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=50,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        text, usage = "", None
        async for chunk in stream:
            text += "".join(c.delta.content or "" for c in chunk.choices)
            usage = chunk.usage or usage
        calls.append({"name": "async stream", "text": text, "usage": [usage.prompt_tokens, usage.completion_tokens]})

    asyncio.run(run_async())
    models = [m.id for m in sync.models.list()]
    retrieved = sync.models.retrieve(model).id

    errors = {}
    for name, key, asked in (("unknown model", cfg["key"], "no-such-model"), ("wrong key", "cg_wrong", model),
                             ("no key", "", model), ("no credits", cfg["poor_key"], model)):  # fmt: skip
        # The SDK will not send an empty key; an empty Authorization header is what "no key" looks like.
        no_key = {} if key else {"Authorization": ""}
        try:
            openai.OpenAI(base_url=base, api_key=key or "unused", max_retries=0).chat.completions.create(
                model=asked,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=50,
                extra_headers=no_key,
            )
            errors[name] = {"class": None}
        except openai.APIStatusError as exc:
            errors[name] = {"class": type(exc).__name__, "status": exc.status_code, "code": exc.code}
    return {"version": openai.__version__, "calls": calls, "models": models, "retrieved": retrieved, "errors": errors}


def _anthropic(cfg: dict[str, Any]) -> dict[str, Any]:
    import anthropic

    base, model = cfg["base_url"], cfg["model"]
    messages = [{"role": "user", "content": "hi from the matrix"}]
    sync = anthropic.Anthropic(base_url=base, api_key=cfg["key"], max_retries=0)
    calls: list[dict[str, Any]] = []

    def text_of(message: Any) -> str:
        return "".join(b.text for b in message.content if b.type == "text")

    done = sync.messages.create(model=model, max_tokens=50, messages=messages)  # type: ignore[arg-type]
    calls.append({"name": "sync", "text": text_of(done), "usage": [done.usage.input_tokens, done.usage.output_tokens]})
    with sync.messages.stream(model=model, max_tokens=50, messages=messages) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    calls.append({"name": "sync stream", "text": text, "usage": [final.usage.input_tokens, final.usage.output_tokens]})

    async def run_async() -> None:
        api = anthropic.AsyncAnthropic(base_url=base, api_key=cfg["key"], max_retries=0)
        done = await api.messages.create(model=model, max_tokens=50, messages=messages)  # type: ignore[arg-type]
        calls.append(
            {"name": "async", "text": text_of(done), "usage": [done.usage.input_tokens, done.usage.output_tokens]}
        )
        async with api.messages.stream(model=model, max_tokens=50, messages=messages) as stream:  # type: ignore[arg-type]
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        calls.append(
            {"name": "async stream", "text": text, "usage": [final.usage.input_tokens, final.usage.output_tokens]}
        )

    asyncio.run(run_async())
    counted = sync.messages.count_tokens(model=model, messages=messages).input_tokens  # type: ignore[arg-type]
    models = [m.id for m in sync.models.list()]
    retrieved = sync.models.retrieve(model).id

    errors = {}
    for name, key, asked in (("unknown model", cfg["key"], "no-such-model"), ("wrong key", "cg_wrong", model),
                             ("no credits", cfg["poor_key"], model)):  # fmt: skip
        try:
            anthropic.Anthropic(base_url=base, api_key=key, max_retries=0).messages.create(
                model=asked,
                max_tokens=50,
                messages=messages,  # type: ignore[arg-type]
            )
            errors[name] = {"class": None}
        except anthropic.APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            error = body.get("error") or {}
            errors[name] = {"class": type(exc).__name__, "status": exc.status_code, "code": error.get("code"),
                            "type": error.get("type"), "envelope": body.get("type")}  # fmt: skip
    return {
        "version": anthropic.__version__,
        "calls": calls,
        "counted": counted,
        "models": models,
        "retrieved": retrieved,
        "errors": errors,
    }


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    print(json.dumps(_openai(config) if config["sdk"] == "openai" else _anthropic(config)))
