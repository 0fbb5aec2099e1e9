"""creditgate's test layer, on top of the generic harness (``creditgate_harness``): what tests of the gateway use.

- ``creditgate.testing.plugin``: the pytest11 entry point; ``creditgate_fixtures = true`` loads the ``cg_*`` fixtures;
- ``creditgate.testing.gateway``: those fixtures, ``TestUser``, ``migrate``, ``start_gateway``, ``gateway_env``, …;
- ``creditgate.testing.auditor``: the ledger auditor (``python -m creditgate.testing.auditor URL``);
- ``creditgate.testing.catalog``: the catalog tests run against; ``creditgate.testing.strategies``: Hypothesis.

Needs the ``harness`` extra (the creditgate-harness distribution, pytest, Hypothesis). The names in ``__all__``
import on first use, so importing this package imports nothing.
"""

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "AuditReport": "creditgate.testing.auditor",
    "CannotAudit": "creditgate.testing.auditor",
    "Violation": "creditgate.testing.auditor",
    "audit": "creditgate.testing.auditor",
    "audit_url": "creditgate.testing.auditor",
    "FAKE_UPSTREAM": "creditgate.testing.catalog",
    "catalog_for_tests": "creditgate.testing.catalog",
    "GATEWAY_APP": "creditgate.testing.gateway",
    "GatewayFactory": "creditgate.testing.gateway",
    "TestUser": "creditgate.testing.gateway",
    "UserFactory": "creditgate.testing.gateway",
    "gateway_env": "creditgate.testing.gateway",
    "migrate": "creditgate.testing.gateway",
    "start_gateway": "creditgate.testing.gateway",
    "stripe_settings": "creditgate.testing.gateway",
}


def __getattr__(name: str) -> Any:
    """Import on first use (PEP 562): pytest loads ``creditgate.testing.plugin`` before coverage starts."""
    if name not in _WHERE:
        raise AttributeError(f"module 'creditgate.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


if TYPE_CHECKING:
    from creditgate.testing.auditor import AuditReport, CannotAudit, Violation, audit, audit_url
    from creditgate.testing.catalog import FAKE_UPSTREAM, catalog_for_tests
    from creditgate.testing.gateway import (
        GATEWAY_APP,
        GatewayFactory,
        TestUser,
        UserFactory,
        gateway_env,
        migrate,
        start_gateway,
        stripe_settings,
    )

__all__ = [
    "FAKE_UPSTREAM",
    "GATEWAY_APP",
    "AuditReport",
    "CannotAudit",
    "GatewayFactory",
    "TestUser",
    "UserFactory",
    "Violation",
    "audit",
    "audit_url",
    "catalog_for_tests",
    "gateway_env",
    "migrate",
    "start_gateway",
    "stripe_settings",
]
