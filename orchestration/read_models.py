"""The read-model graph, read from sql/read_models/ (one file per read model).

A file is the read model's definition (SQL reading the base tables and the
stored read models above it) under a short header:

    -- What it holds, in a sentence (the Dagster description).
    --
    -- kind: audio
    -- level: chapter
    -- logical view: audio_chapter_coverage
    -- key: audio_version_id, chapter_id
    -- lookup: audio_version_id            (optional: an extra index)
    -- upstreams: mv_audio_verse_coverage  (read models it depends on, or -)
    -- base tables: chapters, verses
    -- additive counts: counts             (optional, see below)

A read model keyed by the version alone (a summary) may name a leading CTE
of its SQL, `WITH counts AS (...) SELECT ... FROM counts`, whose columns are
stored columns that are each a sum or count over rows of the levels above
(or do not read them). A chapter-scoped refresh then moves those counts by
what the changed chapters' and books' rows added and removed, and makes the
row from them, instead of adding up every chapter of the version again.

Everything else is made from these files: the registry `migrate` writes to
the database (storage, logical views, refresh functions), the Dagster assets
and checks. Adding a read model is adding a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orchestration.db.base_schema import REQUIRED_COLUMNS
from orchestration.errors import ProgressError
from orchestration.sql_files import sql_files

Kind = Literal["audio", "text"]

KINDS: tuple[Kind, ...] = ("audio", "text")
READ_MODELS_FOLDER = "read_models"
BASE_TABLES = tuple(REQUIRED_COLUMNS)
_HEADER_LINE = re.compile(r"^--\s*([a-z ]+):\s*(.*?)\s*$")
_REQUIRED = ("kind", "level", "logical view", "key", "upstreams", "base tables")
_OPTIONAL = ("lookup", "additive counts")


@dataclass(frozen=True)
class ReadModel:
    name: str
    kind: Kind
    level: str
    upstreams: tuple[str, ...]
    logical_view: str
    description: str
    key_columns: tuple[str, ...]
    lookup_columns: tuple[str, ...]
    base_tables: tuple[str, ...]
    body: str
    # The additive counts (see above): the CTE's query, and the definition
    # with `<counts>` in its place.
    counts_sql: str | None = None
    rows_sql: str | None = None

    @property
    def sync_function(self) -> str:
        """The generated SQL function that refreshes one scope (version or language entity)."""
        return f"progress_sync_{self.logical_view}"

    @property
    def group(self) -> str:
        return f"{self.kind}_progress"

    @property
    def scope_column(self) -> str:
        """What one refresh covers: a version, or (best-version read models) a language entity."""
        return self.key_columns[0]


def _names(value: str) -> tuple[str, ...]:
    return () if value in ("", "-") else tuple(part.strip() for part in value.split(","))


def parse_read_model(path: Path) -> ReadModel:
    """One read-model file; ProgressError naming the file and what is wrong."""
    header: dict[str, str] = {}
    description: list[str] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    body_start = 0
    for body_start, line in enumerate(lines):  # noqa: B007 - the index is used after the loop
        if not line.startswith("--"):
            break
        match = _HEADER_LINE.match(line)
        if match and match.group(1) in (*_REQUIRED, *_OPTIONAL):
            header[match.group(1)] = match.group(2)
        elif not header and line.strip("- "):
            description.append(line.lstrip("- ").strip())
    else:
        body_start = len(lines)
    missing = [key for key in _REQUIRED if key not in header]
    body = "\n".join(lines[body_start:]).strip()
    where = f"sql/{READ_MODELS_FOLDER}/{path.name}"
    if missing or not body or not description:
        what = ", ".join(missing) if missing else "its SQL" if not body else "a description line"
        raise ProgressError(f"{where} lacks {what}")
    if header["kind"] not in KINDS:
        raise ProgressError(f"{where}: kind must be audio or text, not {header['kind']!r}")
    unknown = [t for t in _names(header["base tables"]) if t not in BASE_TABLES]
    if unknown:
        raise ProgressError(f"{where}: unknown base tables {', '.join(unknown)}")
    counts_sql, rows_sql = None, None
    if "additive counts" in header:
        name = header["additive counts"]
        counts_sql, rest = _split_leading_cte(body, name, where)
        rows_sql = f"WITH {name} AS (<counts>) {rest}"
    return ReadModel(
        name=path.stem,
        kind=header["kind"],
        level=header["level"],
        upstreams=_names(header["upstreams"]),
        logical_view=header["logical view"],
        description=" ".join(description),
        key_columns=_names(header["key"]),
        lookup_columns=_names(header.get("lookup", "")),
        base_tables=_names(header["base tables"]),
        body=body,
        counts_sql=counts_sql,
        rows_sql=rows_sql,
    )


def _split_leading_cte(body: str, name: str, where: str) -> tuple[str, str]:
    """`WITH name AS (query) rest` as (query, rest): parentheses matched outside
    string literals, quoted identifiers and comments."""
    opening = re.match(rf"\s*WITH\s+{re.escape(name)}\s+AS\s*\(", body, re.IGNORECASE)
    if opening is None:
        raise ProgressError(f"{where}: its SQL must begin with WITH {name} AS (...), the additive counts it names")
    depth, i = 1, opening.end()
    while i < len(body) and depth:
        if body.startswith("--", i):
            i = body.find("\n", i) % (len(body) + 1)
        elif body[i] in "'\"":
            i = body.find(body[i], i + 1) % (len(body) + 1)
        else:
            depth += {"(": 1, ")": -1}.get(body[i], 0)
        i += 1
    rest = body[i:].strip()
    if depth or not rest:
        raise ProgressError(f"{where}: WITH {name} AS (...) is not closed, or nothing reads it")
    return body[opening.end() : i - 1].strip(), rest


def _in_dependency_order(models: list[ReadModel]) -> tuple[ReadModel, ...]:
    """Upstreams first (then by name); refuses unknown upstreams, cycles, and a
    definition that reads a read model it does not declare."""
    by_name = {m.name: m for m in models}
    for model in models:
        unknown = [u for u in model.upstreams if u not in by_name]
        if unknown:
            raise ProgressError(f"read model {model.name}: unknown upstreams {', '.join(unknown)}")
        undeclared = [
            other
            for other in by_name
            if other != model.name
            and other not in model.upstreams
            and re.search(rf"\b{re.escape(other)}\b", model.body)
        ]
        if undeclared:
            raise ProgressError(f"read model {model.name} reads {', '.join(undeclared)}: declare it in upstreams")
    ordered: list[ReadModel] = []
    placed: set[str] = set()
    while len(ordered) < len(models):
        ready = sorted(m.name for m in models if m.name not in placed and set(m.upstreams) <= placed)
        if not ready:
            raise ProgressError(
                "read models depend on each other in a cycle: " + ", ".join(sorted(set(by_name) - placed))
            )
        ordered.extend(by_name[name] for name in ready)
        placed.update(ready)
    return tuple(ordered)


def load_read_models(root: Path | None = None) -> tuple[ReadModel, ...]:
    """Every read model of a sql/ folder (this release's by default), upstreams first."""
    return _in_dependency_order([parse_read_model(path) for path in sql_files(READ_MODELS_FOLDER, root)])


READ_MODELS: tuple[ReadModel, ...] = load_read_models()

BY_NAME: dict[str, ReadModel] = {model.name: model for model in READ_MODELS}


def of_kind(kind: Kind) -> tuple[ReadModel, ...]:
    return tuple(model for model in READ_MODELS if model.kind == kind)
