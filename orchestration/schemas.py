"""Column schemas of the tables Dagster shows (`dagster/column_schema`).

Written down here because definitions load without a database. Until the
read-model files of sql/ carry their columns, tests/test_schemas.py compares
this list with a freshly migrated database, so it cannot drift: a column
added in SQL and not here (or typed differently) fails that test.
"""

import dagster as dg

# (column, PostgreSQL type, NOT NULL, description)
Column = tuple[str, str, bool, str]

_ID = "uuid"
_FRACTION = "Unrounded numeric division; NULL when the denominator is 0."


def _summary(kind: str, chapters_column: str, chapters_meaning: str) -> list[Column]:
    return [
        (f"{kind}_version_id", _ID, True, f"The {kind} version (one row per live version)."),
        ("covered_verses", "bigint", False, "Distinct covered verses of its own bible version."),
        ("total_verses", "bigint", False, "Verses of its bible version."),
        ("verse_fraction", "numeric", False, f"covered_verses / total_verses. {_FRACTION}"),
        (chapters_column, "bigint", False, chapters_meaning),
        ("total_chapters", "bigint", False, "Chapters of its bible version."),
        ("chapter_fraction", "numeric", False, f"{chapters_column} / total_chapters. {_FRACTION}"),
        ("books_complete", "bigint", False, "Books whose every chapter is complete."),
        ("total_books", "bigint", False, "Books of its bible version."),
        ("book_fraction", "numeric", False, f"books_complete / total_books. {_FRACTION}"),
    ]


def _chain(kind: str, chapter_count: str, chapters_column: str, chapters_meaning: str) -> dict[str, list[Column]]:
    version = (f"{kind}_version_id", _ID, True, f"The {kind} version.")
    # Audio chapter rows carry has_any (SPEC section 3); text chapter rows do not.
    has_any = (
        [("has_any", "boolean", False, "Always true: only covered chapters have a row.")] if kind == "audio" else []
    )
    return {
        f"mv_{kind}_verse_coverage": [version, ("verse_id", "text", True, "A covered verse.")],
        f"mv_{kind}_chapter_coverage": [
            version,
            ("chapter_id", "text", True, "A chapter with at least one covered verse."),
            (chapter_count, "bigint", False, "Distinct covered verses of the chapter."),
            ("total_verses", "integer", False, "chapters.total_verses."),
            *has_any,
            ("is_complete", "boolean", False, f"{chapter_count} = total_verses."),
        ],
        f"mv_{kind}_book_coverage": [
            version,
            ("book_id", "text", True, "Every book of the version's bible version, covered or not."),
            ("complete_chapters", "bigint", False, "Complete chapters of the book (0 or more)."),
            ("total_chapters", "bigint", False, "Chapters of the book."),
            ("is_complete", "boolean", False, "total_chapters > 0 and every chapter complete."),
        ],
        f"mv_{kind}_version_progress_summary": _summary(kind, chapters_column, chapters_meaning),
        f"language_entity_best_{kind}_version": [
            ("language_entity_id", _ID, True, "A language with at least one live version."),
            (
                f"{kind}_version_id",
                _ID,
                False,
                "Its best version: highest verse, chapter, book fraction, then newest, then smallest id.",
            ),
        ],
    }


READ_MODEL_COLUMNS: dict[str, list[Column]] = {
    **_chain("audio", "covered_verses", "chapters_with_audio", "Chapters with any audio."),
    **_chain("text", "verses_with_text", "complete_chapters", "Complete chapters."),
}

_DELETED = ("deleted_at", "timestamp with time zone", False, "Soft delete: set means gone from every read model.")
_VERSION = [
    ("id", _ID, True, ""),
    ("language_entity_id", _ID, False, ""),
    ("bible_version_id", "text", False, "Its versification: the books, chapters and verses it covers."),
    ("name", "text", False, ""),
    ("created_at", "timestamp with time zone", False, "Newest wins a tie for best version."),
    _DELETED,
]

# The columns the product reads; a database of the apps may have more.
BASE_TABLE_COLUMNS: dict[str, list[Column]] = {
    "language_entities": [("id", _ID, True, ""), ("name", "text", False, "")],
    "bible_versions": [("id", "text", True, ""), ("name", "text", False, "")],
    "books": [
        ("id", "text", True, ""),
        ("bible_version_id", "text", False, ""),
        ("book_number", "integer", False, ""),
        ("name", "text", False, ""),
    ],
    "chapters": [
        ("id", "text", True, ""),
        ("book_id", "text", False, ""),
        ("chapter_number", "integer", False, ""),
        ("total_verses", "integer", True, "Verses a complete chapter covers."),
    ],
    "verses": [
        ("id", "text", True, ""),
        ("chapter_id", "text", False, ""),
        ("verse_number", "integer", False, ""),
        ("global_order", "bigint", True, "Unique and increasing within a bible version; ranges resolve through it."),
    ],
    "audio_versions": _VERSION,
    "text_versions": _VERSION,
    "media_files": [
        ("id", _ID, True, ""),
        ("audio_version_id", _ID, False, ""),
        ("media_type", "text", False, "'audio' or 'video'; only audio counts."),
        ("is_bible_audio", "boolean", False, "Only true counts (NULL does not)."),
        ("upload_status", "text", False, "Only 'completed' counts."),
        ("publish_status", "text", False, "Only 'published' counts."),
        ("chapter_id", "text", False, "Covers the whole chapter when set."),
        ("start_verse_id", "text", False, "Covers the verses from here to end_verse_id (global_order)."),
        ("end_verse_id", "text", False, "NULL: the start verse alone."),
        _DELETED,
    ],
    "media_files_verses": [
        ("id", _ID, True, ""),
        ("media_file_id", _ID, False, ""),
        ("verse_id", "text", False, ""),
        _DELETED,
    ],
    "verse_texts": [
        ("id", _ID, True, ""),
        ("text_version_id", _ID, False, ""),
        ("verse_id", "text", False, ""),
        ("verse_text", "text", False, ""),
        _DELETED,
    ],
}


def table_schema(columns: list[Column]) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=name,
                type=type_,
                description=description or None,
                constraints=dg.TableColumnConstraints(nullable=not not_null),
            )
            for name, type_, not_null, description in columns
        ]
    )
