"""The harness is a distribution of its own: it imports nothing of the gateway and declares what it imports.

``harness/pyproject.toml`` (creditgate-harness) is what another project installs; these tests read its sources and
its metadata, so a gateway import or an undeclared dependency fails here, not in someone else's venv.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[3] / "harness"
PACKAGE = HARNESS / "creditgate_harness"

GATEWAY_NAME = re.compile(r"\bcreditgate[.:][a-z_]")  # "creditgate.main:create_app", "creditgate.testing", …
# The gateway's own dependencies that the harness must never bring (issue 27): it depends on none of them.
GATEWAY_ONLY = {
    "creditgate",
    "fastapi",
    "alembic",
    "aiohttp",
    "httpx-aiohttp",
    "httpx-sse",
    "purgatory",
    "prometheus-client",
    "pydantic-settings",
    "stripe",
    "pyjwt",
    "cryptography",
    "testcontainers",
}
# The distribution that provides each top-level module the harness imports.
DISTRIBUTION = {
    "pytest": "pytest",
    "_pytest": "pytest",
    "httpx": "httpx",
    "respx": "respx",
    "starlette": "starlette",
    "uvicorn": "uvicorn",
    "asgi_lifespan": "asgi-lifespan",
    "sqlalchemy": "sqlalchemy",
    "asyncpg": "asyncpg",
    "redis": "redis",
    "jwt": "pyjwt",
    "cryptography": "cryptography",
    "testcontainers": "testcontainers",
    "docker": "testcontainers",  # docker-py comes with testcontainers
    "locust": "locust",
    "gevent": "locust",  # gevent comes with locust
}
# Imported only where present, never required: the project's own SDK or tool.
PROJECT_OWN = {
    "stripe": "fake_stripe switches the stripe SDK to httpx when the project has it",
    "httpcore2": "respx also patches httpx2's transport when the project's SDKs bring it",
    "alembic": "harness_alembic_ini runs the project's own Alembic",
}
# Declared but not imported by name: used through what the harness does.
USED_NOT_IMPORTED = {
    "pytest-asyncio": "runs the harness's async fixtures",
    "aiosqlite": "the driver of database_url's sqlite+aiosqlite:// URLs",
}


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (at any depth, including under TYPE_CHECKING)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def metadata() -> dict[str, list[str]]:
    project = tomllib.loads((HARNESS / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project.get("optional-dependencies", {})
    return {"": project["dependencies"], **extras}


def test_no_harness_module_imports_the_gateway_or_names_it() -> None:
    found = []
    for path in sources():
        for name in imported_modules(path):
            if name == "creditgate" or name.startswith("creditgate."):
                found.append(f"{path.relative_to(HARNESS)} imports {name}")
        for node in ast.walk(ast.parse(path.read_text())):  # import strings: "creditgate.main:create_app", …
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and GATEWAY_NAME.search(node.value):
                found.append(f"{path.relative_to(HARNESS)} names {node.value!r}")
    assert not found, "\n".join(found)
    assert len(sources()) > 20  # the walk saw the package


def test_the_harness_depends_on_nothing_of_the_gateway() -> None:
    declared = {requirement_name(r) for group in metadata().values() for r in group}
    core = {requirement_name(r) for r in metadata()[""]}
    assert not core & GATEWAY_ONLY, core & GATEWAY_ONLY
    assert "creditgate" not in declared
    assert not any("[standard]" in r for r in metadata()[""]), "plain uvicorn: [standard] is the gateway's"


def test_every_import_is_declared_and_every_dependency_is_used() -> None:
    third_party: dict[str, set[str]] = {}
    for path in sources():
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top == "creditgate_harness" or top in sys.stdlib_module_names or top == "__future__":
                continue
            third_party.setdefault(top, set()).add(str(path.relative_to(HARNESS)))
    declared = {requirement_name(r) for group in metadata().values() for r in group}
    undeclared = {
        top: where
        for top, where in third_party.items()
        if top not in PROJECT_OWN and DISTRIBUTION.get(top, f"? {top}") not in declared
    }
    assert not undeclared, f"imported but not declared in harness/pyproject.toml: {undeclared}"
    used = {DISTRIBUTION[top] for top in third_party if top in DISTRIBUTION}
    unused = declared - used - set(USED_NOT_IMPORTED)
    assert not unused, f"declared but never imported: {unused}"


def test_extras_are_imported_only_when_used() -> None:
    """The plugin and every fixture module load without PyJWT, cryptography, stripe, testcontainers or the gateway."""
    probe = (
        "import sys, pytest\n"
        "import creditgate_harness.plugin as plugin\n"
        "for module in plugin.FIXTURE_MODULES:\n"
        "    __import__(module)\n"
        "import creditgate_harness.fakes.signers, creditgate_harness.oracle, creditgate_harness.report\n"
        "print(' '.join(sorted(m for m in ('jwt', 'cryptography', 'stripe', 'testcontainers', 'docker', 'hypothesis',"
        " 'creditgate', 'fastapi') if m in sys.modules)))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == [], f"loaded by the harness at start-up: {loaded}"
