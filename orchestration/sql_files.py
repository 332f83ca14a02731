"""Where the SQL the product installs lives: sql/ in a checkout, or the copy
packaged with an installed wheel. Three folders, by how they change:

    sql/migrations/NNN_name.sql   append-only: tables, columns, data moves
    sql/definitions/NN_name.sql   repeatable: functions, views, triggers
    sql/read_models/<name>.sql    one read model each: header and definition
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from orchestration.settings import PROJECT_ROOT


def sql_dir() -> Path:
    in_checkout = PROJECT_ROOT / "sql"
    if in_checkout.is_dir():
        return in_checkout
    return Path(str(resources.files("orchestration") / "sql"))


def sql_files(folder: str, root: Path | None = None) -> list[Path]:
    """The .sql files of one folder, in name order."""
    return sorted(((root or sql_dir()) / folder).glob("*.sql"))
