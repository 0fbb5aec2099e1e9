"""The OpenAI-compatible inference routes and the request flow behind them."""
