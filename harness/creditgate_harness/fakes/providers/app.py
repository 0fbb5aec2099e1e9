"""A scriptable fake LLM provider.

``FakeProvider().app`` is an ASGI app speaking OpenAI's ``/v1/chat/completions`` (JSON and SSE with a
final usage chunk), Anthropic's ``/v1/messages`` (JSON and its typed SSE events: input tokens in
``message_start``, output tokens in ``message_delta``) and ``/v1/messages/count_tokens``, and OpenAI's
``/v1/images/generations``. Errors come in each vendor's own shape. Use it
in-process through ``httpx.ASGITransport`` or as a server (``python -m harness.fakes.providers``).

Script what the next calls get with ``provider.push(Fault.status(503), Reply(completion_tokens=7))``;
when the script is empty every call gets ``provider.default``. Every call is recorded in ``calls``, and every
completion it actually served (OpenAI chat or Anthropic messages: a 2xx answer, or the part of a stream it sent
before a cut or a disconnect) in ``served``: the money oracle's record of what the upstream delivered
(``GET /_fake/served`` on a server). ``gate`` holds every answer until it is set, so concurrent requests overlap
inside the app (``fire(…, hold=provider)`` sets it once all of them wait).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from creditgate_harness.fakes.providers.storm import Storm


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful answer; token counts default to the fake's own estimate."""

    content: str = "Hello from the fake provider."
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    include_usage: bool = True
    latency: float = 0.0
    chunk_delay: float = 0.0  # seconds between streamed chunks


@dataclass(frozen=True, slots=True)
class Fault:
    """A failure the next call gets. Build one with the class methods."""

    kind: str
    status: int = 500
    retry_after: int | None = None
    seconds: float = 0.0
    after_chunks: int = 0

    @classmethod
    def status_code(cls, status: int = 500) -> Fault:
        """An HTTP error with an OpenAI-style error body."""
        return cls(kind="status", status=status)

    @classmethod
    def rate_limited(cls, retry_after: int = 1) -> Fault:
        """429 with a ``Retry-After`` header."""
        return cls(kind="status", status=429, retry_after=retry_after)

    @classmethod
    def hang(cls, seconds: float = 3600.0) -> Fault:
        """Answer nothing for ``seconds`` (the client's timeout fires first)."""
        return cls(kind="hang", seconds=seconds)

    @classmethod
    def malformed(cls) -> Fault:
        """200 with a body that is not JSON."""
        return cls(kind="malformed")

    @classmethod
    def cut_stream(cls, after_chunks: int = 2) -> Fault:
        """A stream that stops after ``after_chunks`` content chunks, with no usage and no [DONE]."""
        return cls(kind="cut", after_chunks=after_chunks)

    def as_json(self) -> dict[str, Any]:
        """``{"fault": kind, …}`` with the fields that differ from the defaults, as ``/_fake/script`` reads it."""
        defaults = Fault(self.kind)
        fields = {name: getattr(self, name) for name in ("status", "retry_after", "seconds", "after_chunks")}
        return {"fault": self.kind, **{k: v for k, v in fields.items() if v != getattr(defaults, k)}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fault:
        """The inverse of ``as_json``: ``{"fault": "status", "status": 503}``."""
        fields = dict(data)
        kind = fields.pop("fault", None)
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault {kind!r}: one of {', '.join(FAULT_KINDS)}")
        return cls(kind=str(kind), **fields)


FAULT_KINDS = ("status", "hang", "malformed", "cut")


@dataclass(frozen=True, slots=True)
class RecordedCall:
    path: str
    body: Any
    headers: dict[str, str]
    at: float


@dataclass(frozen=True, slots=True)
class ServedCompletion:
    """A chat completion the fake served: the prompt's message texts, the usage it reported (if it sent one)
    and the text it delivered. ``complete`` is false for a stream cut (scripted) or abandoned by the client."""

    path: str
    model: str
    texts: list[str]
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    usage_sent: bool
    content: str
    complete: bool
    at: float
    max_tokens: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def _estimate_tokens(text: str) -> int:
    return max(1, len(text.encode()) // 4)


def _message_texts(body: dict[str, Any]) -> list[str]:
    """Each message's text, as a gateway reads it (a string content, or its parts' text joined)."""
    texts: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.append("".join(str(p.get("text", "")) for p in content if isinstance(p, dict)))
        else:
            texts.append("")
    return texts


IMAGE_TOKENS = 1600  # what a vendor bills for one large input image (Anthropic: ~1.15 megapixels ≈ 1,600 tokens)
_IMAGE_BLOCKS = frozenset({"image", "image_url", "input_image"})
# Request fields vendors do not bill as prompt tokens (identifiers and delivery options: OpenAI's ``user`` and
# ``metadata`` are labels, stop sequences end the output).
_NOT_PROMPT = frozenset(
    {
        "model",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "stop_sequences",
        "user",
        "metadata",
        "service_tier",
        "reasoning_effort",
    }
)


PAGE_TOKENS = 3100  # what a vendor bills for one PDF page: its text (~1,500) and its image (~1,600)
_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


def _pdf_pages(block: dict[str, Any]) -> int | None:
    """Pages of a base64 PDF block (Anthropic ``document`` or OpenAI ``file``), counted as a vendor's parser would
    see them in an uncompressed page tree; ``None`` for anything else."""
    source, file = block.get("source"), block.get("file")
    data: Any = None
    if isinstance(source, dict) and source.get("media_type") == "application/pdf":
        data = source.get("data")
    elif isinstance(file, dict) and str(file.get("file_data", "")).startswith("data:application/pdf"):
        data = str(file["file_data"]).partition(",")[2]
    if not isinstance(data, str):
        return None
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        return None
    return len(_PAGE.findall(raw)) if raw.startswith(b"%PDF") else None


def _everything_tokens(body: dict[str, Any]) -> int:
    """What a vendor bills as the prompt, read off the body it *received*: the UTF-8 bytes of every string in it
    (message text, tool definitions, tool calls and results, documents, system blocks, fields nobody modelled) at
    4 bytes a token, ``IMAGE_TOKENS`` per image and ``PAGE_TOKENS`` per PDF page — not the gateway's rule, and
    blind to nothing."""
    images = pages = 0

    def strings(value: Any, key: str | None = None) -> int:
        nonlocal images, pages
        if isinstance(value, str):
            return 0 if key in {"type", "role"} else len(value.encode("utf-8", "surrogatepass"))
        if isinstance(value, dict):
            if value.get("type") in _IMAGE_BLOCKS:
                images += 1
                return 0
            if (counted := _pdf_pages(value)) is not None:
                pages += counted
                return 0
            return sum(strings(v, k) for k, v in value.items())
        if isinstance(value, list):
            return sum(strings(v) for v in value)
        return 0

    size = sum(strings(v, k) for k, v in body.items() if k not in _NOT_PROMPT)
    return max(1, -(-size // 4)) + IMAGE_TOKENS * images + PAGE_TOKENS * pages


def _prompt_text(body: dict[str, Any]) -> str:
    parts: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    if isinstance(body.get("system"), str):
        parts.append(body["system"])
    return " ".join(parts)


@dataclass
class FakeProvider:
    """State of one fake upstream: its script, its default reply, the calls it received and what it served.

    ``gate``: when not ``None``, every call is recorded, takes its scripted step, then waits until the gate is
    set before it answers — so N concurrent requests all reach the upstream, and all are inside the app at once,
    before any of them gets an answer (a non-atomic balance check shows up as a double spend). Set it to an
    ``asyncio.Event`` for an in-process fake, or to ``creditgate_harness.Gate`` (thread-safe) for one serving on
    a port; ``fire(client, n, …, hold=provider)`` does both and opens the gate once every request waits at it.
    """

    default: Reply | Fault = field(default_factory=Reply)
    calls: list[RecordedCall] = field(default_factory=list)
    served: list[ServedCompletion] = field(default_factory=list)
    gate: asyncio.Event | None = None  # not None: calls wait until it is set before answering
    # Bill the prompt as a vendor does, from everything received (``_everything_tokens``), instead of from the
    # messages' text alone: what the adversarial suite's cost-coverage properties hold the gateway to.
    bill_everything: bool = False
    # The current (or last) storm: faults mixed into the calls the script does not cover, for a while.
    last_storm: Storm | None = None
    _script: deque[Reply | Fault] = field(default_factory=deque)

    def push(self, *steps: Reply | Fault) -> None:
        """Queue what the next calls get, in order."""
        self._script.extend(steps)

    def storm(
        self,
        faults: Fault | Mapping[Fault, float],
        *,
        rate: float | None = None,
        seconds: float | None = None,
        calls: int | None = None,
        seed: int | None = None,
    ) -> Storm:
        """Mix ``faults`` into the next calls (those the script does not cover) until the storm ends.

        One fault at ``rate`` (default 1: every call), or ``{fault: share}``; it ends after ``seconds`` or
        ``calls``, on ``end()``/``end_storm()``, or with its ``with`` block. Shares are kept exactly and spread
        evenly (a ``seed`` draws at random instead). A new storm replaces the current one. See ``Storm``."""
        self.last_storm = Storm.of(faults, rate=rate, seconds=seconds, calls=calls, seed=seed)
        return self.last_storm

    def end_storm(self) -> Storm | None:
        """End the current storm (if any); return it, with what it gave."""
        return self.last_storm.end() if self.last_storm is not None else None

    def reset(self) -> None:
        self._script.clear()
        self.calls.clear()
        self.served.clear()
        self.default = Reply()
        self.gate = None
        self.last_storm = None

    def _next(self) -> Reply | Fault:
        if self._script:
            return self._script.popleft()
        storm = self.last_storm
        if storm is not None and storm.active:
            return storm.next() or self.default
        return self.default

    @functools.cached_property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
                Route("/v1/images/generations", self._images, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/_fake/calls", self._calls, methods=["GET"]),
                Route("/_fake/script", self._script_endpoint, methods=["POST"]),
                Route("/_fake/script", self._clear_script, methods=["DELETE"]),
                Route("/_fake/served", self._served, methods=["GET"]),
                Route("/_fake/storm", self._storm_endpoint, methods=["POST"]),
                Route("/_fake/storm", self._storm_state, methods=["GET"]),
                Route("/_fake/storm", self._end_storm, methods=["DELETE"]),
            ]
        )

    async def _record(self, request: Request) -> tuple[dict[str, Any], Reply | Fault]:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = {"_raw": raw.decode(errors="replace")}
        self.calls.append(RecordedCall(request.url.path, body, dict(request.headers), time.time()))
        step = self._next()
        if self.gate is not None:
            await self.gate.wait()
        return body, step

    @staticmethod
    async def _fault_response(fault: Fault, *, anthropic: bool = False) -> Response | None:
        def error(message: str, kind: str) -> dict[str, Any]:
            detail = {"message": message, "type": kind}
            return {"type": "error", "error": detail} if anthropic else {"error": detail}

        if fault.kind == "hang":
            await asyncio.sleep(fault.seconds)
            return JSONResponse(error("hung", "timeout"), status_code=504)
        if fault.kind == "malformed":
            return Response("{not json", media_type="application/json")
        if fault.kind == "status":
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
            body = error(f"fake upstream error {fault.status}", "api_error" if anthropic else "upstream_error")
            return JSONResponse(body, status_code=fault.status, headers=headers)
        return None

    async def _chat(self, request: Request) -> Response:
        body, step = await self._record(request)
        if isinstance(step, Fault):
            response = await self._fault_response(step)
            if response is not None:
                return response
            return StreamingResponse(self._chat_stream(body, Reply(), cut=step), media_type="text/event-stream")
        if step.latency:
            await asyncio.sleep(step.latency)
        if body.get("stream"):
            return StreamingResponse(self._chat_stream(body, step), media_type="text/event-stream")
        prompt, completion = self._usage(body, step)
        payload: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": step.content},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
        }
        if step.include_usage:
            payload["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        self._serve(request.url.path, body, False, (prompt, completion), step.include_usage, step.content, True)
        return JSONResponse(payload)

    def _serve(
        self,
        path: str,
        body: dict[str, Any],
        stream: bool,
        usage: tuple[int, int],
        usage_sent: bool,
        content: str,
        complete: bool,
    ) -> None:
        self.served.append(
            ServedCompletion(
                path,
                str(body.get("model", "")),
                _message_texts(body),
                stream,
                usage[0],
                usage[1],
                usage_sent,
                content,
                complete,
                time.time(),
                limit
                if isinstance(limit := body.get("max_tokens") or body.get("max_completion_tokens"), int)
                else None,
            )
        )

    def usage_for(self, body: dict[str, Any], reply: Reply | None = None) -> tuple[int, int]:
        """``(prompt, completion)`` tokens this fake reports for a chat ``body`` it received (with ``reply``, or
        its default reply): the upstream's side of the books, for tests that check what a request was charged."""
        return self._usage(body, reply or (self.default if isinstance(self.default, Reply) else Reply()))

    def _usage(self, body: dict[str, Any], reply: Reply) -> tuple[int, int]:
        prompt = reply.prompt_tokens
        if prompt is None:
            prompt = _everything_tokens(body) if self.bill_everything else _estimate_tokens(_prompt_text(body))
        completion = reply.completion_tokens
        if completion is None:
            completion = _estimate_tokens(reply.content)
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(limit, int) and limit > 0:
            completion = min(completion, limit)
        return prompt, completion

    async def _chat_stream(self, body: dict[str, Any], reply: Reply, cut: Fault | None = None) -> AsyncIterator[str]:
        ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        base = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "fake-model"),
        }
        words = reply.content.split(" ")
        sent: list[str] = []
        usage_sent = complete = False
        try:
            yield _sse(
                {
                    **base,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                }
            )
            for i, word in enumerate(words):
                if cut is not None and i >= cut.after_chunks:
                    return
                text = word if i == 0 else " " + word
                if reply.chunk_delay:
                    await asyncio.sleep(reply.chunk_delay)
                yield _sse({**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})
                sent.append(text)
            yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            options = body.get("stream_options") or {}
            if reply.include_usage and options.get("include_usage"):
                prompt, completion = self._usage(body, reply)
                totals = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
                yield _sse({**base, "choices": [], "usage": totals})
                usage_sent = True
            yield "data: [DONE]\n\n"
            complete = True
        finally:  # also when the client goes away mid-stream: what was sent is what was served
            usage = self._usage(body, reply)
            self._serve("/v1/chat/completions", body, True, usage, usage_sent, "".join(sent), complete)

    async def _messages(self, request: Request) -> Response:
        body, step = await self._record(request)
        if isinstance(step, Fault):
            response = await self._fault_response(step, anthropic=True)
            if response is not None:
                return response
            return StreamingResponse(self._messages_stream(body, Reply(), cut=step), media_type="text/event-stream")
        if step.latency:
            await asyncio.sleep(step.latency)
        if body.get("stream"):
            return StreamingResponse(self._messages_stream(body, step), media_type="text/event-stream")
        prompt, completion = self._usage(body, step)
        self._serve(request.url.path, body, False, (prompt, completion), True, step.content, True)
        return JSONResponse(
            {
                "id": f"msg_{uuid.uuid4().hex[:24]}",
                "type": "message",
                "role": "assistant",
                "model": body.get("model", "fake-model"),
                "content": [{"type": "text", "text": step.content}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": prompt, "output_tokens": completion},
            }
        )

    async def _messages_stream(
        self, body: dict[str, Any], reply: Reply, cut: Fault | None = None
    ) -> AsyncIterator[str]:
        """Anthropic's event sequence; ``message_delta`` carries the output tokens, as Anthropic sends it."""
        prompt, completion = self._usage(body, reply)
        message = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "fake-model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": 1},
        }
        sent: list[str] = []
        usage_sent = complete = False
        try:
            yield _event({"type": "message_start", "message": message})
            yield _event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
            yield _event({"type": "ping"})
            for i, word in enumerate(reply.content.split(" ")):
                if cut is not None and i >= cut.after_chunks:
                    return
                if reply.chunk_delay:
                    await asyncio.sleep(reply.chunk_delay)
                text = word if i == 0 else " " + word
                yield _event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})
                sent.append(text)
            yield _event({"type": "content_block_stop", "index": 0})
            delta = {"stop_reason": "end_turn", "stop_sequence": None}
            yield _event({"type": "message_delta", "delta": delta, "usage": {"output_tokens": completion}})
            usage_sent = True
            yield _event({"type": "message_stop"})
            complete = True
        finally:  # as for chat streams: what was sent is what was served
            self._serve("/v1/messages", body, True, (prompt, completion), usage_sent, "".join(sent), complete)

    async def _count_tokens(self, request: Request) -> Response:
        """Anthropic's token counting: the same count ``/v1/messages`` reports (the script is not consumed)."""
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        self.calls.append(RecordedCall(request.url.path, body, dict(request.headers), time.time()))
        return JSONResponse({"input_tokens": _estimate_tokens(_prompt_text(body))})

    async def _images(self, request: Request) -> Response:
        body, step = await self._record(request)
        if isinstance(step, Fault):
            response = await self._fault_response(step)
            return response or JSONResponse({"error": {}}, status_code=500)
        n = body.get("n") or 1
        data = [
            {"url": f"https://fake.invalid/img/{uuid.uuid4().hex}.png", "revised_prompt": body.get("prompt")}
            for _ in range(int(n))
        ]
        return JSONResponse({"created": int(time.time()), "data": data})

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "fake"}]})

    async def _calls(self, request: Request) -> Response:
        return JSONResponse([{"path": c.path, "body": c.body, "at": c.at} for c in self.calls])

    async def _served(self, request: Request) -> Response:
        """Every chat completion served so far (``?since=N`` skips the first N)."""
        since = int(request.query_params.get("since", "0") or 0)
        return JSONResponse([c.as_json() for c in self.served[since:]])

    async def _clear_script(self, request: Request) -> Response:
        """Drop every step still queued (the end of a scripted fault window)."""
        dropped = len(self._script)
        self._script.clear()
        return JSONResponse({"dropped": dropped})

    async def _script_endpoint(self, request: Request) -> Response:
        """Script a running server: ``[{"fault": "status", "status": 503}, {"reply": {...}}]``."""
        try:
            steps = [Fault.from_json(s) if "fault" in s else Reply(**s.get("reply", {})) for s in await request.json()]
        except (AttributeError, TypeError, ValueError) as exc:
            return JSONResponse({"error": {"message": f"bad script: {exc!r}", "type": "invalid_request"}}, 422)
        self.push(*steps)
        return JSONResponse({"queued": len(self._script)})

    async def _storm_endpoint(self, request: Request) -> Response:
        """Start a storm on a running server: ``{"faults": [{"fault": "status", "status": 503, "share": 0.2}],
        "seconds": 3}`` (also ``"calls"``, ``"seed"``); a 422 names what is wrong."""
        body = await request.json()
        try:
            mix = {Fault.from_json({k: v for k, v in f.items() if k != "share"}): f["share"] for f in body["faults"]}
            storm = self.storm(mix, seconds=body.get("seconds"), calls=body.get("calls"), seed=body.get("seed"))
        except (KeyError, TypeError, ValueError) as exc:
            return JSONResponse({"error": {"message": f"bad storm: {exc!r}", "type": "invalid_request"}}, 422)
        return JSONResponse(storm.as_json())

    async def _storm_state(self, request: Request) -> Response:
        """The current (or last) storm and what it gave so far; ``null`` if none."""
        return JSONResponse(self.last_storm.as_json() if self.last_storm is not None else None)

    async def _end_storm(self, request: Request) -> Response:
        """End the storm; answer what it gave (``null`` if there was none)."""
        storm = self.end_storm()
        return JSONResponse(storm.as_json() if storm is not None else None)


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _event(data: dict[str, Any]) -> str:
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n"
