"""A throwaway PostgreSQL cluster for the tests: initdb in a temp dir, 127.0.0.1 only, a random free port.

Debian's ``postgresql`` packages provide the server (``.ci/run`` installs them
with apt when missing): a real server, the engine teams run, no download at
test time. PostgreSQL refuses to run as root, so as root the cluster belongs to
the ``postgres`` user (``runuser``). Without the binaries the PostgreSQL tests
skip, except when ``CI`` is set: there a missing server fails the run.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PgServer", "find_bin_dir", "start_server"]


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` holding initdb, or the one on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    """A running cluster: superuser ``postgres`` (trust auth, 127.0.0.1 only) on ``port``."""

    bin_dir: Path
    data: Path
    root: Path
    port: int
    as_user: list[str]

    def url(self, db: str = "postgres", user: str = "postgres", password: str | None = None,
            schema: str | None = None) -> str:
        auth = f"{user}:{password}" if password else user
        q = f"?schema={schema}" if schema else ""
        return f"postgresql+psycopg://{auth}@127.0.0.1:{self.port}/{db}{q}"

    def sql(self, statement: str, db: str = "postgres") -> None:
        """Run ``statement`` as the superuser (autocommit)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=db, autocommit=True) as c:
            c.execute(statement)

    def create_database(self, name: str) -> str:
        self.sql(f'CREATE DATABASE "{name}"')
        return name

    def stop(self) -> None:
        subprocess.run([*self.as_user, str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                        "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def start_server(durable: bool = False) -> PgServer:
    """initdb + start a cluster; raises RuntimeError with the reason when it cannot.

    ``durable=False`` (tests) turns fsync off; benchmarks keep PostgreSQL's durable defaults.
    """
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb) not found; install them with "
                                "`apt-get install -y postgresql`")
    root = Path(tempfile.mkdtemp(prefix="mitsuke-pg-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        # PostgreSQL refuses root: the cluster is the postgres user's, which must reach the temp dir.
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chmod(root, 0o755)
        os.chown(root, pw.pw_uid, pw.pw_gid)
        p = root.parent
        while p != p.parent:
            if not os.stat(p).st_mode & 0o001:
                os.chmod(p, os.stat(p).st_mode | 0o711)
            p = p.parent
        as_user = ["runuser", "-u", "postgres", "--"]
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    run = subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres",
                          "-E", "UTF8", "--no-sync"], capture_output=True, text=True, env=env, timeout=120)
    if run.returncode:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {run.stderr.strip()[-500:]}")
    port = _free_port()
    opts = f"-h 127.0.0.1 -p {port} -k {root} -c max_connections=200"
    if not durable:
        opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    run = subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opts, "-l",
                          str(root / "server.log"), "-w", "start"], capture_output=True, text=True, env=env,
                         timeout=120)
    if run.returncode:
        log = (root / "server.log").read_text(errors="replace")[-800:] if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed: {run.stderr.strip()[-300:]} {log}")
    return PgServer(bin_dir, data, root, port, as_user)
