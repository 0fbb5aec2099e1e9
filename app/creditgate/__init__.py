"""creditgate: a reference LLM gateway with prepaid fractional credits."""

__version__ = "0.1.0"
