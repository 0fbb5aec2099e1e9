"""creditgate's test harness: a pytest plugin, service backends, fakes and a ledger auditor.

Importing this package does not import pytest, so the fakes also serve ``creditgate serve --demo``.
"""
