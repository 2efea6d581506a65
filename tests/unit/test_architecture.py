"""What each part may not do (docs/architecture.md#what-each-part-may-not-do), as imports.

The boundaries the architecture page states are kept by what each package imports: the
domain imports no I/O library and nothing of `service/` outside itself, the receiver no
processor, API or store, the log nothing of the domain, the API the processor only
through its owned-state interface, and the processor no Zalo client. Read from the
source with `ast`, so that a new module is checked the day it is added.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[2] / "service"


def imports(package: str) -> dict[str, set[str]]:
    """Module path -> the absolute names it imports, for every module of `package`."""
    found: dict[str, set[str]] = {}
    for path in sorted((SERVICE / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(SERVICE.parent))] = names
    return found


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    """`module: name` for every import in `package` of a name under `forbidden`."""
    return [
        f"{module}: {name}"
        for module, names in imports(package).items()
        for name in sorted(names)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


# Libraries that do I/O, and the parts of `service/` other than the domain.
IO = ("aiohttp", "aiokafka", "sqlite3", "rocksdict", "asyncio", "socket", "httpx", "requests")
OUTSIDE_DOMAIN = tuple(
    f"service.{p.stem}" for p in SERVICE.iterdir() if p.stem not in {"domain", "__init__"}
)


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("domain", IO + OUTSIDE_DOMAIN),
        ("receiver", ("service.processor", "service.api", "service.store", "service.zalo")),
        ("log", ("service.domain", "service.processor", "service.api", "service.receiver")),
        (
            "processor",
            ("service.api", "service.receiver", "service.zalo.client", "service.zalo.proxy"),
        ),
    ],
)
def test_a_part_imports_nothing_it_may_not_use(package: str, forbidden: tuple[str, ...]) -> None:
    assert offenders(package, forbidden) == []


def test_the_api_reaches_the_processor_only_through_the_owned_states() -> None:
    reached = {
        name
        for names in imports("api").values()
        for name in names
        if name.startswith("service.processor")
    }
    assert reached == {"service.processor.owned"}


def test_the_check_sees_a_forbidden_import() -> None:
    assert offenders("api", ("service.processor.owned",)) != []
