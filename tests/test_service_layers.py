"""The gateway's layers (issue 13): HTTP status codes only at the edge, and no import cycle between
service/core and service/backends. Read from the sources, so a violation fails before it is ever run."""

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[1] / "service"


def imports(path: Path) -> set[str]:
    """Modules a file imports, and `module.name` for every `from module import name`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def test_http_exceptions_only_at_the_edge():
    edge = {SERVICE / "main.py", *SERVICE.glob("api/**/*.py")}
    users = {path for path in SERVICE.rglob("*.py") if "HTTPException" in path.read_text()}
    assert users <= edge, sorted(str(path.relative_to(SERVICE)) for path in users - edge)
    status_users = {path for path in SERVICE.rglob("*.py") if "fastapi.status" in imports(path)
                    or "fastapi.responses" in imports(path)}
    assert status_users <= edge


def test_core_does_not_import_the_backends():
    for path in SERVICE.glob("core/*.py"):
        assert not any(name.startswith("service.backends") for name in imports(path)), path.name


def test_every_kind_of_failure_has_one_status():
    from service.api.errors import RETRY_LATER, STATUS
    from service.core.errors import ErrorKind

    assert set(STATUS) == set(ErrorKind)
    assert {STATUS[kind] for kind in RETRY_LATER} == {503}
