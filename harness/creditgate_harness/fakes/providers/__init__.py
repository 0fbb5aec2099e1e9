"""A fake LLM upstream (OpenAI chat/completions, Anthropic messages, images) with scripted faults and storms."""

from creditgate_harness.fakes.providers.app import FakeProvider, Fault, RecordedCall, Reply
from creditgate_harness.fakes.providers.client import FakeProviderClient
from creditgate_harness.fakes.providers.storm import Storm

__all__ = ["FakeProvider", "FakeProviderClient", "Fault", "RecordedCall", "Reply", "Storm"]
