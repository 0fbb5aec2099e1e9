"""A fake LLM upstream (OpenAI chat/completions, Anthropic messages, images) with scripted faults."""

from creditgate_harness.fakes.providers.app import FakeProvider, Fault, RecordedCall, Reply

__all__ = ["FakeProvider", "Fault", "RecordedCall", "Reply"]
