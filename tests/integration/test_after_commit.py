"""shared.store.after_commit: observers run once their transaction commits, never for what rolled back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from shared.store import Store, after_commit, savepoint


async def test_observers_run_after_commit_and_not_for_what_rolled_back(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.sqlite3", "CREATE TABLE IF NOT EXISTS t(x INTEGER);")
    seen: list[str] = []
    try:

        def committed(tx: sqlite3.Connection) -> None:
            tx.execute("INSERT INTO t VALUES (1)")
            after_commit(tx, lambda: seen.append("kept"))
            with pytest.raises(ValueError), savepoint(tx):
                after_commit(tx, lambda: seen.append("undone with its savepoint"))
                raise ValueError
            after_commit(tx, lambda: seen.append("after the savepoint"))
            assert seen == []  # nothing before COMMIT

        await store.run(committed)
        assert seen == ["kept", "after the savepoint"]

        def rolled_back(tx: sqlite3.Connection) -> None:
            after_commit(tx, lambda: seen.append("rolled back"))
            raise RuntimeError("no")

        with pytest.raises(RuntimeError):
            await store.run(rolled_back)
        await store.run(lambda tx: after_commit(tx, lambda: seen.append("next")))
        assert seen == ["kept", "after the savepoint", "next"]
    finally:
        await store.close()
