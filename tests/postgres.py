"""A throwaway PostgreSQL server for the tests that put the orchestrator's state in one.

The server is a fresh cluster (``initdb``) in a temporary folder, listening on a free
loopback port (or, with :func:`cluster`, on an address in a network namespace) with trust
authentication for its one user, and removed at the end. As root it runs as the
``postgres`` user (PostgreSQL refuses to run as root). With ``FEDSILO_POSTGRES_URL`` set
to a server's URL (a user allowed to create databases), the tests use that server instead.
Without either the tests skip, or fail when ``FEDSILO_REQUIRE_POSTGRES=1`` (which
``.ci/run`` sets once it has installed PostgreSQL).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from tests.integration.conftest import free_port

ADMIN_URL = "FEDSILO_POSTGRES_URL"
REQUIRE = "FEDSILO_REQUIRE_POSTGRES"
USER = "fedsilo"


def _bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version, reverse=True)
    return Path(versions[0]).parent if versions else None


def _version(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it when PostgreSQL is required."""
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{REQUIRE}=1 but {reason}")
    pytest.skip(reason)


@contextmanager
def server() -> Iterator[str]:
    """The URL of a PostgreSQL server's maintenance database, for the test session."""
    given = os.environ.get(ADMIN_URL)
    if given:
        yield given
        return
    with cluster() as started:
        yield started.url


@dataclass(frozen=True)
class Cluster:
    """A running throwaway cluster: the URL of its ``database`` and how to query it."""

    url: str
    psql: Callable[[str], str]
    """Run one SQL statement on the database through the server's socket; return rows."""


@contextmanager
def cluster(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    namespace: str | None = None,
    clients: str | None = None,
    database: str = "postgres",
) -> Iterator[Cluster]:
    """A fresh cluster listening on ``host:port`` (a free port when ``None``), stopped and
    removed at the end.

    With ``namespace`` the server runs in that network namespace; ``clients`` (a CIDR
    such as ``10.0.0.1/32``) may connect over TCP besides loopback; ``database`` is created
    when it is not the maintenance database. The cluster's own commands (``createdb``,
    ``psql``) reach it through its Unix socket, from its own namespace.
    """
    bin_dir = _bin_dir()
    if bin_dir is None:
        unavailable(
            "PostgreSQL is not installed (no pg_ctl on PATH or in /usr/lib/postgresql): "
            f"apt-get install postgresql, or set {ADMIN_URL} to a server's URL"
        )
    as_user: list[str] = [] if namespace is None else ["ip", "netns", "exec", namespace]
    folder = Path(tempfile.mkdtemp(prefix="fedsilo-pg-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder)
            unavailable("running as root and there is no 'postgres' user to run the server as")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user += ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port() if port is None else port

    def run(*args: str) -> str:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def psql(statement: str) -> str:
        return run(
            str(bin_dir / "psql"),
            *("-h", str(folder), "-p", str(port), "-U", USER, "-d", database),
            *("-X", "-tA", "-v", "ON_ERROR_STOP=1", "-c", statement),
        )

    options = (
        f"-c listen_addresses={host} -c port={port} -c unix_socket_directories={folder} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    try:
        run(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        if clients is not None:
            with (data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all {USER} {clients} trust\n")
        run(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"could not start a PostgreSQL server for the tests: {exc}") from exc
    try:
        if database != "postgres":
            run(str(bin_dir / "createdb"), "-h", str(folder), "-p", str(port), "-U", USER, database)
        yield Cluster(url=f"postgresql://{USER}@{host}:{port}/{database}", psql=psql)
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(folder, ignore_errors=True)


def new_database(admin_url: str) -> str:
    """Create an empty database on the server of ``admin_url``; return its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"fedsilo_test_{uuid.uuid4().hex[:12]}"
    url = make_url(admin_url)
    with psycopg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname=url.database,
        autocommit=True,
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)
