"""Fakes that speak the real wire protocols; each is an ASGI app you can also run as a server."""
