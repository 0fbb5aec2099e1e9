"""Upstream providers: one adapter per wire protocol, and the failover pool that calls them.

- ``base.py``: the ``Adapter`` interface and the neutral values that cross it (``ChatCall``, ``Completion``,
  ``Delta``, ``Usage``).
- ``openai.py``, ``anthropic.py``: the two wire protocols, as an upstream and as what a client speaks.
- ``pool.py``: ``ProviderPool`` — a model's providers in catalog order, one circuit breaker each.
"""

from creditgate.providers.anthropic import AnthropicAdapter
from creditgate.providers.base import Adapter, Kind
from creditgate.providers.openai import OpenAIAdapter

ADAPTERS: dict[Kind, Adapter] = {"openai": OpenAIAdapter(), "anthropic": AnthropicAdapter()}

__all__ = ["ADAPTERS", "Adapter", "Kind"]
