"""The library knows nothing of Airflow: only the operators, the DAG factory, the settings
(Variables and connections, resolved and passed in) and the UI plugin import it. The rest runs
the same from the CLI, the tests and a task."""

from __future__ import annotations

import ast
from pathlib import Path

import vlmdata

PACKAGE = Path(vlmdata.__file__).parent
MAY_IMPORT_AIRFLOW = ("operators/", "ui/", "dagfactory.py", "settings.py")


def airflow_imports(path: Path) -> list[str]:
    """Every module named ``airflow...`` that the file imports, at any depth (a function's lazy
    import counts: it is still the library reaching into Airflow)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "airflow"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "airflow":
            found.append(node.module)
    return found


def test_only_the_airflow_layer_imports_airflow():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(MAY_IMPORT_AIRFLOW):
            continue
        if imports := airflow_imports(path):
            offenders[relative] = imports
    assert offenders == {}, f"library modules importing Airflow (resolve it in settings and pass it in): {offenders}"


def test_the_check_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from airflow.sdk import Variable\n    import airflow.models as m\n")
    assert airflow_imports(module) == ["airflow.sdk", "airflow.models"]
