"""Counters of the zoo kept by the database itself: ``tally`` (key -> n), so stats and the leaderboard's
totals read a few rows instead of counting whole tables.

Each counted table has triggers that add what an inserted, deleted or changed row contributes, in the
transaction that writes the row: a rollback takes the count back with the row, and rows written by any
path (the ORM, bulk ``INSERT ... SELECT``, ``ON CONFLICT DO NOTHING``, ``ON DELETE CASCADE``) are counted
alike. The terms below are the one definition of every counter; ``install`` writes the triggers from
them and ``recount`` recomputes them from the rows (the migration's backfill).

- SQLite (one writer at a time): row triggers add into ``tally`` directly.
- Postgres: a trigger that updated one ``tally`` row would hold that row's lock until its transaction
  commits, and every concurrent push or encode writing the same table would queue behind it. So
  statement triggers (``REFERENCING NEW/OLD TABLE``) append one row per key and statement to
  ``tally_delta`` (appends never wait on each other), and a read adds ``tally`` and the pending deltas;
  ``TallyRepository.totals`` folds the deltas into ``tally`` first (one reader at a time, by an
  advisory lock; the others just add the deltas). A read costs the writes since the last fold.

A migration that rebuilds one of these tables on SQLite (batch mode: copy, drop, rename) drops its
triggers: it must call ``install`` again (``tests/test_tallies.py`` checks every trigger after
``upgrade head``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session


@dataclass(frozen=True)
class Counted:
    """A table and what each of its rows adds: ``(key, amount)`` SQL expressions over a row ``{r}``."""

    table: str
    terms: tuple[tuple[str, str], ...]
    changes_with: tuple[str, ...] = ()  # the columns an UPDATE may change a term through


def _text_key(what: str) -> str:
    return f"'text:' || CAST({{r}}.text_set_id AS TEXT) || '/{what}'"


COUNTED = (
    Counted(
        "model",
        (("'models'", "1"), ("'private_models'", "CASE WHEN {r}.private THEN 1 ELSE 0 END")),
        ("private",),
    ),
    Counted(
        "version",
        (
            ("'versions'", "1"),
            ("'ready_logical_bytes'", "CASE WHEN {r}.status = 'ready' THEN {r}.logical_bytes ELSE 0 END"),
        ),
        ("status", "logical_bytes"),
    ),
    Counted("file", (("'files'", "1"),)),
    Counted("tensor", (("'tensors'", "1"), ("'encoding:' || {r}.encoding", "1")), ("encoding",)),
    Counted("blob", (("'blobs'", "1"), ("'blob_bytes'", "{r}.size")), ("size",)),
    # the leaderboard of a text: every evaluation on it, and those ranked (a bpb above 0)
    Counted(
        "evaluation",
        (
            (_text_key("evaluations"), "1"),
            (_text_key("ranked"), "CASE WHEN {r}.bits_per_byte > 0 THEN 1 ELSE 0 END"),
        ),
        ("text_set_id", "bits_per_byte"),
    ),
)

ENCODING = "encoding:"


def text_keys(text_set_id: int) -> tuple[str, str]:
    """The keys of a text's evaluation count and ranked count."""
    return f"text:{text_set_id}/evaluations", f"text:{text_set_id}/ranked"


def _terms(counted: Counted, row: str, sign: str = "") -> list[tuple[str, str]]:
    return [(k.format(r=row), f"{sign}({n.format(r=row)})") for k, n in counted.terms]


def _selects(counted: Counted, source: str, sign: str = "") -> str:
    return " UNION ALL ".join(
        f"SELECT {k} AS key, {n} AS n FROM {source} r" for k, n in _terms(counted, "r", sign)
    )


# --------------------------------------------------------------------------- triggers


def _sqlite_triggers(counted: Counted) -> list[str]:
    def upserts(terms: list[tuple[str, str]]) -> str:
        return "".join(
            f"INSERT INTO tally (key, n) VALUES ({k}, {n}) "
            "ON CONFLICT (key) DO UPDATE SET n = n + excluded.n; "
            for k, n in terms
        )

    t = counted.table
    added, removed = upserts(_terms(counted, "NEW")), upserts(_terms(counted, "OLD", "-"))
    out = [
        f"CREATE TRIGGER tally_{t}_insert AFTER INSERT ON {t} BEGIN {added}END",
        f"CREATE TRIGGER tally_{t}_delete AFTER DELETE ON {t} BEGIN {removed}END",
    ]
    if counted.changes_with:
        cols = ", ".join(counted.changes_with)
        moved = upserts(_terms(counted, "OLD", "-") + _terms(counted, "NEW"))
        out.append(f"CREATE TRIGGER tally_{t}_update AFTER UPDATE OF {cols} ON {t} BEGIN {moved}END")
    return out


def _postgres_triggers(counted: Counted) -> list[str]:
    t = counted.table

    def add(rows: str) -> str:
        return (
            f"INSERT INTO tally_delta (key, n) SELECT key, sum(n) FROM ({rows}) c "
            "GROUP BY key HAVING sum(n) <> 0;"
        )

    body = (
        f"IF TG_OP = 'INSERT' THEN {add(_selects(counted, 'new_rows'))} "
        f"ELSIF TG_OP = 'DELETE' THEN {add(_selects(counted, 'old_rows', '-'))} "
        f"ELSE {add(_selects(counted, 'new_rows') + ' UNION ALL ' + _selects(counted, 'old_rows', '-'))} "
        "END IF; RETURN NULL;"
    )
    out = [
        f"CREATE OR REPLACE FUNCTION tally_{t}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} END $$",
        f"CREATE TRIGGER tally_{t}_insert AFTER INSERT ON {t} REFERENCING NEW TABLE AS new_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION tally_{t}()",
        f"CREATE TRIGGER tally_{t}_delete AFTER DELETE ON {t} REFERENCING OLD TABLE AS old_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION tally_{t}()",
    ]
    if counted.changes_with:
        out.append(
            f"CREATE TRIGGER tally_{t}_update AFTER UPDATE ON {t} "
            "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION tally_{t}()"
        )
    return out


def trigger_names() -> set[str]:
    """Every trigger ``install`` writes."""
    return {
        f"tally_{c.table}_{event}"
        for c in COUNTED
        for event in ("insert", "delete", *(("update",) if c.changes_with else ()))
    }


def drop(conn: Connection) -> None:
    """Remove every trigger (and on Postgres its function)."""
    postgres = conn.dialect.name == "postgresql"
    for c in COUNTED:
        for event in ("insert", "delete", "update"):
            on = f" ON {c.table}" if postgres else ""
            conn.execute(text(f"DROP TRIGGER IF EXISTS tally_{c.table}_{event}{on}"))
        if postgres:
            conn.execute(text(f"DROP FUNCTION IF EXISTS tally_{c.table}()"))


def install(conn: Connection) -> None:
    """(Re)write the triggers, then recount every counter from the rows (in the caller's transaction:
    on Postgres ``CREATE TRIGGER`` locks each table against writes until it commits, so no row is
    written between the recount and the triggers)."""
    drop(conn)
    make = _postgres_triggers if conn.dialect.name == "postgresql" else _sqlite_triggers
    for c in COUNTED:
        for statement in make(c):
            conn.execute(text(statement))
    conn.execute(text("DELETE FROM tally_delta"))
    conn.execute(text("DELETE FROM tally"))
    conn.execute(text(f"INSERT INTO tally (key, n) SELECT key, sum(n) FROM ({_all_terms()}) c GROUP BY key"))


def _all_terms() -> str:
    return " UNION ALL ".join(_selects(c, c.table) for c in COUNTED)


def recount(conn: Connection | Session) -> dict[str, int]:
    """Every counter computed from the rows (what ``tally`` must hold)."""
    rows = conn.execute(text(f"SELECT key, sum(n) FROM ({_all_terms()}) c GROUP BY key"))
    return {k: int(n) for k, n in rows if n}


# --------------------------------------------------------------------------- reading

_FOLD_LOCK = 0x7A6F_7461  # pg advisory lock id ("zota"): one folder at a time

_FOLD = text(
    """
    WITH folder AS (SELECT pg_try_advisory_xact_lock(:lock) AS alone),
    moved AS (DELETE FROM tally_delta WHERE (SELECT alone FROM folder) RETURNING key, n)
    INSERT INTO tally (key, n) SELECT key, sum(n) FROM moved GROUP BY key ORDER BY key
    ON CONFLICT (key) DO UPDATE SET n = tally.n + excluded.n
    """
)

_READ = text(
    "SELECT key, sum(n) FROM (SELECT key, n FROM tally UNION ALL SELECT key, n FROM tally_delta) t "
    "GROUP BY key"
)


class TallyRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def totals(self) -> dict[str, int]:
        """Every counter (a key never counted reads as absent). On Postgres the pending deltas are
        folded into ``tally`` first unless another reader is folding them."""
        if self.s.get_bind().dialect.name == "postgresql":
            self.s.execute(_FOLD, {"lock": _FOLD_LOCK})
        return {k: int(n) for k, n in self.s.execute(_READ)}

    @staticmethod
    def encodings(totals: dict[str, int]) -> dict[str, int]:
        """Tensors per encoding, from ``totals`` (encodings no tensor has are left out)."""
        return {k[len(ENCODING) :]: n for k, n in sorted(totals.items()) if k.startswith(ENCODING) and n}
