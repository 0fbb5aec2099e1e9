"""A tiny wallet service: ask an LLM, pay for the tokens, top up through Stripe Checkout."""
