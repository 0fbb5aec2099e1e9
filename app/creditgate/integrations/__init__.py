"""Integrations our users run: Lago subscriptions, Telegram Mini App sign-in."""
