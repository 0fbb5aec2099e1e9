"""Models, prices and providers, loaded from a JSON data file."""
