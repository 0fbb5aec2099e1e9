"""Stripe top-ups: checkout, billing portal, signed idempotent webhooks, payment records."""
