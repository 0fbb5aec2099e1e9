"""The one interface every wire protocol implements, and the neutral values that cross it.

An ``Adapter`` knows one protocol (OpenAI-style or Anthropic-style) in both roles:

- as an **upstream**: build the request (``chat_request``, ``images_request``, ``count_request``), parse the
  answer into text + usage (``parse_completion``) and parse stream events into ``Delta``s (``stream_parser``);
- as what the **client** speaks: render a ``Completion`` in the protocol's shape (``render_completion``) and
  write a stream in its events (``stream_writer``).

So OpenAI ⇄ Anthropic translation goes through two adapters and nothing outside ``providers/`` branches on
a protocol. When client and upstream speak the same protocol, the client's body goes up as sent and the
upstream's answer comes back as sent (only ``model`` renamed): tools and other fields the gateway does not
model survive.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal, Protocol

from httpx_sse import ServerSentEvent

Kind = Literal["openai", "anthropic"]
# The neutral finish reasons are OpenAI's; the Anthropic adapter maps its stop reasons onto them.
Finish = Literal["stop", "length", "tool_calls", "content_filter"]


class Malformed(Exception):
    """The upstream's answer does not have the protocol's shape (the pool fails over)."""


MAX_TOKENS = 2**31 - 1  # what a usage record's integer columns hold; no real answer comes near it


def token_count(value: Any, *, field: str) -> int:
    """An upstream's token count, or ``Malformed``: a missing count is 0; anything but a whole number in
    0…2³¹−1 (negative, fractional, a string, absurdly large) is a malformed answer, never a price."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        raise Malformed(f"usage {field} is {value!r}, not a token count")
    return value


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Turn:
    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True, slots=True)
class ChatCall:
    """One chat request: as the client sent it (``native``) and in the neutral form adapters translate from."""

    protocol: Kind  # what the client spoke
    native: Mapping[str, Any]  # the validated body, sent as is (new model, max_tokens) to a same-protocol upstream
    system: str
    turns: tuple[Turn, ...]
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    include_usage: bool = False  # OpenAI streams: the client asked for the usage chunk

    def texts(self) -> list[str]:
        """Everything the prompt says, for the gateway's token estimate."""
        return ([self.system] if self.system else []) + [t.text for t in self.turns]


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole answer: its text, the upstream's usage (``None`` when it sent none) and its raw body."""

    kind: Kind  # the upstream's protocol
    text: str
    usage: Usage | None
    finish: Finish
    native: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Delta:
    """What one upstream stream event carries; ``native`` is the event itself (for a same-protocol client)."""

    text: str = ""
    usage: Usage | None = None  # the final usage, once the upstream has sent it
    finish: Finish | None = None
    done: bool = False  # the upstream said the stream is complete
    native: dict[str, Any] | None = field(default=None, compare=False)


class StreamParser(Protocol):
    def feed(self, event: ServerSentEvent) -> list[Delta]:
        """The deltas in one SSE event (none for a keep-alive or an unparsable line)."""
        ...


class StreamWriter(Protocol):
    def start(self) -> bytes:
        """What the client gets before the first upstream event."""
        ...

    def write(self, delta: Delta) -> bytes:
        """One upstream delta in the client's protocol (may be empty)."""
        ...

    def finish(self, billed: Usage, *, complete: bool) -> bytes:
        """The end of the stream: ``billed`` is what is charged; ``complete`` is False when upstream broke off."""
        ...


class Adapter(ABC):
    """One wire protocol. Subclasses are stateless; ``ADAPTERS`` in ``providers`` holds one of each."""

    kind: ClassVar[Kind]

    @abstractmethod
    def headers(self, api_key: str) -> dict[str, str]:
        """The upstream's auth (and version) headers."""

    @abstractmethod
    def chat_request(self, call: ChatCall, *, model: str, stream: bool) -> tuple[str, dict[str, Any]]:
        """(path, JSON body) asking the upstream ``model`` to answer ``call``."""

    @abstractmethod
    def parse_completion(self, body: Any) -> Completion:
        """The upstream's whole answer; ``Malformed`` if it is not one."""

    @abstractmethod
    def stream_parser(self) -> StreamParser:
        """A parser for one upstream stream (it may keep state across events)."""

    @abstractmethod
    def render_completion(self, completion: Completion, *, model: str, call: ChatCall) -> dict[str, Any]:
        """``completion`` in this protocol's response shape, for a client that spoke it."""

    @abstractmethod
    def stream_writer(self, *, model: str, call: ChatCall, upstream: Kind, prompt_estimate: int) -> StreamWriter:
        """Writes an upstream stream of protocol ``upstream`` as this protocol's events."""

    def rate_limit_headers(self, *, limit: int, remaining: int, reset: datetime) -> dict[str, str]:
        """The protocol's own rate-limit headers, beside the gateway's ``X-RateLimit-*``."""
        return {}

    def images_request(self, payload: Mapping[str, Any], *, model: str) -> tuple[str, dict[str, Any]] | None:
        """(path, body) for an image generation, or ``None`` when the protocol has none."""
        return None

    def parse_images(self, body: Any) -> list[dict[str, Any]]:
        raise Malformed(f"{self.kind} does not generate images")

    def count_request(self, call: ChatCall, *, model: str) -> tuple[str, dict[str, Any]] | None:
        """(path, body) asking the upstream to count the prompt's tokens, or ``None`` when it cannot."""
        return None

    def parse_count(self, body: Any) -> int:
        raise Malformed(f"{self.kind} does not count tokens")
