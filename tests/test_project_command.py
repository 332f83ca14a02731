"""`python3 project.py test` says where the suite ran, with its counts, and
says so when it skipped the PostgreSQL 15 pass."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from orchestration.settings import PROJECT_ROOT


def project_module():
    spec = importlib.util.spec_from_file_location("project", PROJECT_ROOT / "project.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_summary_names_the_server_version_and_counts(tmp_path: Path) -> None:
    report = tmp_path / "report.xml"
    report.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="12" failures="1" errors="0"'
        ' skipped="2"><properties><property name="postgresql_version" value="15.18"/></properties>'
        "</testsuite></testsuites>"
    )
    assert project_module().summarize(report, "PostgreSQL 15") == "PostgreSQL 15.18: 9 passed, 1 failures, 2 skipped"


def test_a_missing_postgresql_15_is_said_not_silently_skipped(tmp_path: Path) -> None:
    passes, skipped = project_module().suite_passes({}, tmp_path / "15" / "bin")
    assert [name for name, _ in passes] == ["the embedded PostgreSQL"]
    assert skipped == [
        f"PostgreSQL 15: SKIPPED, not installed in {tmp_path / '15' / 'bin'} (apt-get install postgresql-15)"
    ]
    (tmp_path / "15" / "bin").mkdir(parents=True)
    (tmp_path / "15" / "bin" / "postgres").touch()
    passes, skipped = project_module().suite_passes({}, tmp_path / "15" / "bin")
    assert [name for name, _ in passes] == ["the embedded PostgreSQL", "PostgreSQL 15"] and skipped == []
