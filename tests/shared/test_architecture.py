"""The services meet on Kafka only: no module under `services/X/` imports `services.Y`
(Y != X), and `shared/` imports no service. What two services need goes to `shared/`.

Each file is parsed with `ast` (not grepped): `import`, `from ... import` (relative ones
resolved against the file's package, also those that climb out of it), imports inside
functions, and `importlib.import_module` / `__import__` with a literal name. No I/O but
reading the sources.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.settings import PROJECT_ROOT

ROOT = PROJECT_ROOT
SERVICES = ROOT / "services"
SHARED = ROOT / "shared"
ABOVE_TOP = "<relative import above the top-level package>"


def module_name(path: Path) -> tuple[str, bool]:
    """`services/aids/api.py` -> ('services.aids.api', False); an `__init__.py` names its
    package -> ('services.aids', True)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def resolve(package: str, level: int, module: str | None) -> str:
    """The absolute module of `from <level dots><module> import ...` written in `package`."""
    if level == 0:
        return module or ""
    parts = package.split(".")
    if level - 1 >= len(parts):
        return ABOVE_TOP
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{module}" if module else base


def imports(source: str, name: str, is_package: bool) -> Iterator[tuple[int, list[str]]]:
    """For each import in `source` (the module `name`), its line and the absolute modules it
    may load, the module first: `from P import n` may load P and P.n (n may be a submodule,
    as in `from services import aids`)."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, [alias.name]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(package, node.level, node.module)
            if target == ABOVE_TOP:
                yield node.lineno, [target]
                continue
            names = [alias.name for alias in node.names if alias.name != "*"]
            yield node.lineno, [target, *(f"{target}.{n}" if target else n for n in names)]
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield node.lineno, [first.value]


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def service_of(module: str) -> str | None:
    """'services.aids.reports' -> 'aids'; None for a module outside `services/` (or the bare
    `services` package, which holds no service)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "services" and len(parts) > 1 else None


def python_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*.py") if "__pycache__" not in path.parts)


def violations(
    source: str, name: str, is_package: bool, forbidden: Callable[[str], bool]
) -> list[tuple[int, str]]:
    """(line, first forbidden module) of each import in `source` that may load one."""
    found = []
    for line, targets in imports(source, name, is_package):
        bad = [target for target in targets if target == ABOVE_TOP or forbidden(target)]
        if bad:
            found.append((line, bad[0]))
    return sorted(found)


def service_violations(source: str, name: str, is_package: bool) -> list[tuple[int, str]]:
    """Imports of another service by a module of service `name`."""
    own = service_of(name)
    return violations(source, name, is_package,
                      lambda target: service_of(target) not in (None, own))


def shared_violations(source: str, name: str, is_package: bool) -> list[tuple[int, str]]:
    """Imports of anything under `services` by a `shared` module."""
    return violations(source, name, is_package,
                      lambda target: target == "services" or target.startswith("services."))


def report(offences: list[str], rule: str) -> str:
    return f"{rule}; {len(offences)} offending import(s):\n" + "\n".join(offences)


Check = Callable[[str, str, bool], list[tuple[int, str]]]


def scan(folder: Path, check: Check) -> list[str]:
    """Each offending import under `folder` as 'path:line: statement  (-> module)'."""
    offences = []
    for path in python_files(folder):
        name, is_package = module_name(path)
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for line, target in check(source, name, is_package):
            statement = lines[line - 1].strip()
            offences.append(f"{path.relative_to(ROOT)}:{line}: {statement}  (-> {target})")
    return offences


def service_folders() -> list[Path]:
    return sorted(
        folder for folder in SERVICES.iterdir()
        if folder.is_dir() and (folder / "__init__.py").exists()
    )


# --- The rules ----------------------------------------------------------------------------


def test_no_service_imports_another_service() -> None:
    offences = [offence for folder in service_folders()
                for offence in scan(folder, service_violations)]

    assert not offences, report(
        offences, "a service imports another service (they meet on Kafka only: move what "
        "both need to shared/)"
    )


def test_shared_imports_no_service() -> None:
    offences = scan(SHARED, shared_violations)

    assert not offences, report(offences, "shared/ imports a service (it must not know them)")


# --- The check itself ---------------------------------------------------------------------


def test_the_check_sees_every_service_and_their_relative_imports() -> None:
    assert [folder.name for folder in service_folders()] == ["aids", "outcomes", "referrals"]
    for folder in service_folders():
        assert (folder / "app.py") in python_files(folder)
    assert len(python_files(SHARED)) >= 10
    api = SERVICES / "aids" / "api.py"
    targets = {target for _, found in imports(api.read_text(), "services.aids.api", False)
               for target in found}
    assert "services.aids.reports" in targets  # `from . import reports`
    assert "shared.reports.year_param" in targets


# Sources that, in services/outcomes/reports.py, import another service.
CROSSING = [
    pytest.param("import services.aids.reports", id="import"),
    pytest.param("import services.aids as aids", id="import-as"),
    pytest.param("from services.aids.reports import parse_year", id="from"),
    pytest.param("from services.aids import reports", id="from-package"),
    pytest.param("from services import aids", id="from-services"),
    pytest.param("from ..aids.reports import parse_year", id="relative-climbing"),
    pytest.param("from .. import aids", id="relative-package"),
    pytest.param("from ... import anything", id="above-the-top"),
    pytest.param("def f():\n    from services.referrals import store\n", id="in-a-function"),
    pytest.param("if TYPE_CHECKING:\n    import services.aids.store\n", id="type-checking"),
    pytest.param("import importlib\nimportlib.import_module('services.aids.reports')\n",
                 id="import_module"),
    pytest.param("__import__('services.referrals.store')", id="__import__"),
]


@pytest.mark.parametrize("source", CROSSING)
def test_the_check_catches_an_import_of_another_service(source: str) -> None:
    assert service_violations(source, "services.outcomes.reports", False)


def test_the_check_resolves_relative_imports_in_a_package_init() -> None:
    # In services/outcomes/__init__.py, `..` is `services` and `.` is services.outcomes.
    assert service_violations("from ..aids import app", "services.outcomes", True)
    assert not service_violations("from . import app", "services.outcomes", True)


def test_the_check_names_the_file_and_line() -> None:
    source = "from shared.contract import Topic\n\nfrom services.aids.reports import x\n"

    assert service_violations(source, "services.outcomes.reports", False) == [
        (3, "services.aids.reports"),
    ]
    assert service_violations("from services import aids", "services.outcomes", True) == [
        (1, "services.aids"),
    ]


@pytest.mark.parametrize("source", [
    "from . import domain",
    "from .store import OutcomeStore",
    "from services.outcomes import domain",
    "import services.outcomes.store",
    "from shared.reports import report_engine",
    "import services",
    "from sqlmodel import Session",
])
def test_the_check_allows_own_service_shared_and_libraries(source: str) -> None:
    assert not service_violations(source, "services.outcomes.reports", False)


@pytest.mark.parametrize("source", [
    "import services.aids.reports",
    "from services.referrals import store",
    "from services import aids",
    "import services",
    "from ..services.aids import reports",
    "def f():\n    from services.outcomes.reports import load_funnel\n",
])
def test_the_check_catches_shared_importing_a_service(source: str) -> None:
    assert shared_violations(source, "shared.reports", False)


@pytest.mark.parametrize("source", [
    "from shared.http import bounded_int",
    "from .http import bounded_int",
    "from . import contract",
])
def test_the_check_allows_shared_importing_shared(source: str) -> None:
    assert not shared_violations(source, "shared.reports", False)
