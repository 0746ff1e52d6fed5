"""The Optuna storage URL (``--storage``, recipe key ``storage``; by default SQLite in the store),
checked before any work: a URL SQLAlchemy knows, its database driver installed, a SQLite file's
folder there and writable and the file a database, a server that answers.

Imports nothing of the project but its errors (the recipe validates the URL's scheme with it, the
pipeline runs the whole check before embedding); SQLAlchemy loads only when a URL is checked.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

from automl.errors import ConfigError, MissingDependencyError, StoreError

# pip package of each database driver SQLAlchemy names (its import name differs or is ambiguous).
DRIVER_PACKAGES = {
    "psycopg": "'psycopg[binary]'",
    "psycopg2": "psycopg2-binary",
    "asyncpg": "asyncpg",
    "pg8000": "pg8000",
    "mysqldb": "mysqlclient",
    "pymysql": "pymysql",
    "mysqlconnector": "mysql-connector-python",
    "oracledb": "oracledb",
    "pyodbc": "pyodbc",
}
EXAMPLES = "sqlite:///path/optuna.db, postgresql://user:password@host/db, mysql+pymysql://user@host/db"


def redact(url: str) -> str:
    """The URL with its password hidden, for run records, job answers and messages: the one between
    the user and the last ``@`` before the host (a password may hold ``@``), and a ``password=`` query
    parameter."""
    url = re.sub(r"://([^:/@?#]*):[^/?#]*@", r"://\1:***@", url)
    return re.sub(r"([?&](?:password|passwd|pwd)=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


def dialect_of(url: str):
    """SQLAlchemy's dialect class for ``url``; ``ConfigError`` for a URL it cannot parse or a scheme
    it has no dialect for. Imports no database driver."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"storage URL {redact(url)!r} cannot be parsed ({exc}); expected a database URL such "
                          f"as {EXAMPLES}.") from None
    try:
        return parsed.get_dialect()
    except NoSuchModuleError:
        raise ConfigError(f"storage URL {redact(url)!r}: unknown database scheme {parsed.drivername!r}; expected "
                          f"sqlite, postgresql, mysql, oracle or mssql (optionally +driver), e.g. {EXAMPLES}."
                          ) from None


def check_storage(url: str) -> None:
    """Everything about ``url`` that can fail before a search starts, each with its fix: the scheme
    (``dialect_of``), the driver (``MissingDependencyError`` with the pip command), for SQLite the
    folder (there, writable) and an existing file (a database, writable, not corrupt), for a server
    a connection. Creates nothing."""
    from sqlalchemy.engine import make_url

    dialect = dialect_of(url)
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        package = DRIVER_PACKAGES.get(dialect.driver, dialect.driver)
        raise MissingDependencyError(
            f"storage URL {redact(url)!r} needs the database driver {dialect.driver!r}, which is not installed "
            f"({exc}). Install it with `pip install {package}`, name an installed driver in the URL "
            f"({dialect.name}+DRIVER://...), or leave --storage out to keep the study in the store's SQLite file."
        ) from None
    parsed = make_url(url)
    if dialect.name == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            check_sqlite_file(Path(parsed.database))
        return
    _connect(url)


def check_sqlite_file(path: Path) -> None:
    """A SQLite study file: its folder exists and is writable; if it exists, it is a writable,
    uncorrupted SQLite database (``PRAGMA quick_check``)."""
    folder = path.parent
    if not folder.is_dir():
        raise StoreError(f"the SQLite storage's folder {folder} does not exist (storage file {path}); create it, "
                         "or pass a --storage URL (or --store) in an existing folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(f"the SQLite storage's folder {folder} is not writable (storage file {path}); make it "
                         "writable or pass a --storage URL (or --store) in a writable folder.")
    if not path.exists():
        return
    if not path.is_file():
        raise StoreError(f"the SQLite storage {path} is not a file; move it away or pass another --storage.")
    if not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"the SQLite storage {path} is not readable and writable; fix its permissions or pass "
                         "another --storage.")
    problem = _sqlite_problem(path)
    if problem:
        raise StoreError(
            f"the SQLite storage {path} is not a usable database ({problem}). It holds only Optuna studies (runs "
            f"and embeddings are kept elsewhere): move it aside (`mv {path} {path}.broken`) and fit again to start "
            "the search afresh, or run `automl store check --repair`.")


def _sqlite_problem(path: Path) -> str | None:
    """Why ``path`` is not a sound SQLite database, or None. Read-only: opened with ``mode=ro``."""
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = con.execute("PRAGMA quick_check").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        return str(exc)
    return None if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:3])


def _connect(url: str) -> None:
    from sqlalchemy import create_engine

    try:
        engine = create_engine(url)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except Exception as exc:  # every driver has its own errors; all mean "cannot use this storage"
        raise StoreError(f"cannot connect to the storage {redact(url)!r}: {str(exc).splitlines()[0]}. Check that "
                         "the database server runs and the URL's host, user and password, or leave --storage out "
                         "to keep the study in the store's SQLite file.") from None
