"""The read-model graph, declared once.

Each entry names a stored read model, its kind and level, the read models it
is computed from, its logical view (the live definition in sql/003) and the
SQL function that refreshes one of its scopes. The Dagster assets and checks
are generated from this list, and `migrate` writes it to the database's
progress_read_models table and checks it against the SQL definitions, so
adding a read model is one entry here plus its definition in SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["audio", "text"]
Level = Literal["verse", "chapter", "book", "summary", "best"]

KINDS: tuple[Kind, ...] = ("audio", "text")


@dataclass(frozen=True)
class ReadModel:
    name: str
    kind: Kind
    level: Level
    upstreams: tuple[str, ...]
    logical_view: str
    description: str

    @property
    def sync_function(self) -> str:
        """The generated SQL function that refreshes one scope (version or language entity)."""
        return f"progress_sync_{self.logical_view}"

    @property
    def group(self) -> str:
        return f"{self.kind}_progress"

    @property
    def key_columns(self) -> tuple[str, ...]:
        version = f"{self.kind}_version_id"
        return {
            "verse": (version, "verse_id"),
            "chapter": (version, "chapter_id"),
            "book": (version, "book_id"),
            "summary": (version,),
            "best": ("language_entity_id",),
        }[self.level]


def _chain(kind: Kind) -> tuple[ReadModel, ...]:
    verse = f"mv_{kind}_verse_coverage"
    chapter = f"mv_{kind}_chapter_coverage"
    book = f"mv_{kind}_book_coverage"
    summary = f"mv_{kind}_version_progress_summary"
    medium = "audio recordings" if kind == "audio" else "typed text"
    return (
        ReadModel(
            verse,
            kind,
            "verse",
            (),
            f"{kind}_verse_coverage",
            f"Which verses each live {kind} version covers with {medium}: one row per covered verse.",
        ),
        ReadModel(
            chapter,
            kind,
            "chapter",
            (verse,),
            f"{kind}_chapter_coverage",
            f"Per {kind} version and chapter with any coverage: how many verses are covered "
            "and whether the chapter is complete.",
        ),
        ReadModel(
            book,
            kind,
            "book",
            (chapter,),
            f"{kind}_book_coverage",
            f"Every book of each live {kind} version's bible version, with its complete chapters "
            "(zero coverage included).",
        ),
        ReadModel(
            summary,
            kind,
            "summary",
            (verse, chapter, book),
            f"{kind}_version_progress_summary",
            f"How much of each live {kind} version is done: verse, chapter and book counts "
            "and fractions within its own bible version.",
        ),
        ReadModel(
            f"language_entity_best_{kind}_version",
            kind,
            "best",
            (summary,),
            f"{kind}_best_version_by_language",
            f"The best live {kind} version of each language: highest verse, then chapter, "
            "then book fraction, then newest, then smallest id.",
        ),
    )


READ_MODELS: tuple[ReadModel, ...] = _chain("audio") + _chain("text")

BY_NAME: dict[str, ReadModel] = {model.name: model for model in READ_MODELS}


def of_kind(kind: Kind) -> tuple[ReadModel, ...]:
    return tuple(model for model in READ_MODELS if model.kind == kind)
