"""What a chat request's prompt may cost: every part of the body the upstream receives, bounded before it is sent.

The hold is the gateway's promise that a request cannot cost more than the caller can pay, so the prompt side of
it must count *everything* forwarded — not just the text of the messages. ``prompt_bound`` is

- the messages' (and system prompt's) text, by the documented estimate (``pricing.estimate_prompt_tokens``: one
  token per 3 UTF-8 bytes plus framing) — so a plain-text request is held and charged exactly as before;
- plus every other part of the body at the same rate over its compact JSON: tool definitions, tool calls and
  results, documents, structured-output schemas, audio, any field this gateway does not model;
- plus ``image_input_tokens`` (the catalog's per-image ceiling) for each image, whatever its size or source, and
  ``document_page_tokens`` for each page of a PDF (its page count read with pypdf: vendors bill a document by
  its pages, and a 500-page PDF can be 60 kB);
- nothing for the sampling parameters (``PARAMETERS``), which the upstream does not bill as tokens.

A request whose cost the gateway cannot bound is refused (400 ``unbounded_request``) before anything is held: a
document or file the upstream fetches itself (a URL, a ``file_id``), server-side tools that add input the client
never sent (web search and fetch, code execution, MCP servers), audio output and the dearer service tiers
(``priority``, ``scale``), which the catalog does not price.
Unencodable text (a lone UTF-16 surrogate) is refused as ``unencodable_text``; the route guard (``http_guard``)
normally stops it first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from creditgate.catalog import pricing
from creditgate.errors import InvalidRequest

# Top-level fields that steer sampling or delivery and are not billed as prompt tokens.
PARAMETERS = frozenset(
    {
        "model",
        "max_tokens",
        "max_completion_tokens",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "top_k",
        "n",
        "stop",
        "stop_sequences",
        "user",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "service_tier",
        "parallel_tool_calls",
        "store",
        "metadata",
        "reasoning_effort",
        "messages",  # counted below, part by part
        "system",
    }
)
IMAGE_BLOCKS = frozenset({"image", "image_url", "input_image"})
# Content blocks whose bytes are not in the body: the upstream fetches or expands them itself.
FETCHED_SOURCES = frozenset({"url", "file"})
UNBOUNDED_BLOCKS = frozenset({"container_upload", "mcp_tool_use", "server_tool_use"})
SERVER_TOOL_PREFIXES = ("web_search", "web_fetch", "code_execution", "mcp")
# Service tiers priced at (or under) the catalog's prices; "priority" and "scale" cost the operator more.
CATALOG_TIERS = ("auto", "default", "standard", "flex")


DEFAULT_PAGE_TOKENS = 4600  # the catalog's default (ModelConfig.document_page_tokens)


@dataclass(frozen=True, slots=True)
class Rates:
    """The catalog's ceilings for content whose bytes do not say what it costs."""

    image_tokens: int  # one input image
    page_tokens: int  # one PDF page (its text and its image)


def unbounded(what: str, *, param: str) -> InvalidRequest:
    return InvalidRequest(
        f"the gateway cannot bound the cost of {what}, so it cannot hold credits for it; send the content inline",
        code="unbounded_request",
        param=param,
    )


def unencodable(exc: UnicodeEncodeError) -> InvalidRequest:
    return InvalidRequest(
        f"the body holds text that cannot be encoded as UTF-8 ({exc.reason} at position {exc.start})",
        code="unencodable_text",
    )


def _json_tokens(value: Any) -> int:
    """The documented rate (one token per 3 UTF-8 bytes, plus one) over a value's compact JSON."""
    try:
        return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()) // 3 + 1
    except UnicodeEncodeError as exc:
        raise unencodable(exc) from exc


def _pdf_pages(data: Any, *, param: str) -> int:
    """The page count of a base64 PDF (pypdf, loaded on first use): what a vendor bills a document by. A body
    whose bytes say little about its cost (one content stream shared by 500 pages is 60 kB) is bounded by this."""
    import base64
    import binascii
    import io

    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    if not isinstance(data, str):
        raise unbounded("a document whose data is not base64 text", param=param)
    try:
        return len(PdfReader(io.BytesIO(base64.b64decode(data, validate=True)), strict=False).pages)
    except (binascii.Error, ValueError, PyPdfError, RecursionError) as exc:
        raise unbounded(f"a PDF the gateway cannot read ({type(exc).__name__})", param=param) from exc


def _pdf_data(block: Mapping[str, Any]) -> Any | None:
    """The base64 data of a PDF block (Anthropic's ``document``, OpenAI's ``file`` part), else ``None``."""
    source = block.get("source")
    if block.get("type") == "document" and isinstance(source, Mapping) and source.get("type") == "base64":
        return source.get("data") if source.get("media_type") == "application/pdf" else None
    file = block.get("file")
    if block.get("type") == "file" and isinstance(file, Mapping) and isinstance(file.get("file_data"), str):
        prefix, _, data = file["file_data"].partition(",")
        return data if prefix.startswith("data:application/pdf") else None
    return None


def _block_tokens(block: Any, *, rates: Rates, param: str, top: bool = True) -> int:
    """What one content block costs beyond what the text estimate counted: at the top of a message, a ``text``
    block's text was counted there; anywhere deeper (a tool result's or a search result's ``content`` list, any
    block that nests blocks) nothing was, so everything in it counts."""
    if not isinstance(block, Mapping):
        return _json_tokens(block)
    kind = block.get("type")
    if kind in IMAGE_BLOCKS:
        return rates.image_tokens
    if kind in UNBOUNDED_BLOCKS:
        raise unbounded(f"a {kind!r} block", param=param)
    source = block.get("source")
    if isinstance(source, Mapping) and source.get("type") in FETCHED_SOURCES:
        raise unbounded(f"a {kind!r} block the upstream fetches itself (source {source.get('type')!r})", param=param)
    file = block.get("file")
    if kind == "file" and isinstance(file, Mapping) and "file_data" not in file:
        raise unbounded("a file given by id", param=param)
    if (pdf := _pdf_data(block)) is not None:
        rest = {k: v for k, v in block.items() if k not in {"source", "file"}}
        return _json_tokens(rest) + rates.page_tokens * _pdf_pages(pdf, param=param)
    content = block.get("content")
    if isinstance(content, list):  # nested blocks: their text, images and documents count in full
        rest = {k: v for k, v in block.items() if k != "content"}
        nested = sum(_block_tokens(b, rates=rates, param=param, top=False) for b in content)
        return _json_tokens(rest) + nested
    if kind == "text" and top:
        rest = {k: v for k, v in block.items() if k not in {"type", "text", "cache_control"}}
        return _json_tokens(rest) if rest else 0
    return _json_tokens(block)


def _message_tokens(message: Any, *, rates: Rates, param: str) -> int:
    if not isinstance(message, Mapping):
        return _json_tokens(message)
    total = 0
    for key, value in message.items():
        if key == "role":
            continue
        if key == "content":
            if isinstance(value, list):
                total += sum(_block_tokens(b, rates=rates, param=param) for b in value)
            elif value is not None and not isinstance(value, str):
                total += _json_tokens(value)
        else:  # tool_calls, tool_call_id, name, function_call, audio, refusal, …
            total += _json_tokens(value)
    return total


def _tools_tokens(tools: Any, *, param: str) -> int:
    if isinstance(tools, list):
        for tool in tools:
            kind = tool.get("type") if isinstance(tool, Mapping) else None
            if isinstance(kind, str) and kind.startswith(SERVER_TOOL_PREFIXES):
                raise unbounded(f"the server-side tool {kind!r}", param=param)
    return _json_tokens(tools)


def prompt_bound(
    body: Mapping[str, Any], texts: Iterable[str], *, image_tokens: int, page_tokens: int = DEFAULT_PAGE_TOKENS
) -> int:
    """The most prompt tokens this body can cost upstream: ``texts`` (the messages' and system prompt's text) by
    the documented estimate, plus every other part of ``body`` (see the module docstring)."""
    rates = Rates(image_tokens, page_tokens)
    try:
        total = pricing.estimate_prompt_tokens(list(texts))
    except UnicodeEncodeError as exc:
        raise unencodable(exc) from exc
    for key, value in body.items():
        if key == "messages" and isinstance(value, list):
            total += sum(_message_tokens(m, rates=rates, param="messages") for m in value)
        elif key == "system":
            if isinstance(value, list):
                total += sum(_block_tokens(b, rates=rates, param="system") for b in value)
        elif key == "tools":
            total += _tools_tokens(value, param="tools")
        elif key in {"mcp_servers", "web_search_options"} and value:
            raise unbounded(f"{key!r}", param=key)
        elif key in {"audio", "modalities"} and value and (key == "audio" or "audio" in value):
            raise unbounded("audio output", param=key)
        elif key == "service_tier" and value is not None and not (isinstance(value, str) and value in CATALOG_TIERS):
            raise unbounded(f"service tier {value!r} (the catalog prices {', '.join(CATALOG_TIERS)})", param=key)
        elif key not in PARAMETERS:
            total += _json_tokens(value)
    return total
