"""The store keeps its SQL: no module outside the store modules holds SQL or touches sqlite3 (checked on the source
with `ast`), the core store names no plugin's field, the named reads and writes the plugins use in its place, and
the one interface (`RecordSink`) both the `Store` and the Ray worker's proxy implement."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib.util
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

import cai
from cai.calls import Completion
from cai.store import Store
from cai.store.batch import BatchTables
from cai.store.sink import RecordSink

SRC = Path(cai.__file__).parent
STORE = SRC / "store"  # the store package: the one place SQL may be
SQL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|PRAGMA|BEGIN|COMMIT|ROLLBACK|SAVEPOINT|"
                 r"RELEASE|VACUUM|WITH)\s")
CONNECTION_CALLS = {"execute", "executemany", "executescript"}
PLUGINS = ("batch", "cluster", "rbr", "labels", "report")


def sql_uses(path: Path) -> list[str]:
    """Where `path` holds SQL: string literals that start like a statement, sqlite3 imports, calls of a
    connection's execute methods, and use of the store's connection (`_read`) or of a `read` method."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        where = f"{path.relative_to(SRC)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.match(node.value):
            found.append(f"{where} SQL text {node.value[:40]!r}")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if "sqlite3" in names:
                found.append(f"{where} imports sqlite3")
        elif isinstance(node, ast.Attribute) and (node.attr in CONNECTION_CALLS or node.attr == "_read"):
            found.append(f"{where} .{node.attr}")
        elif isinstance(node, ast.Attribute) and node.attr == "read" and "store" in ast.unparse(node.value):
            found.append(f"{where} {ast.unparse(node)}")
    return found


def test_no_module_outside_the_store_modules_holds_sql() -> None:
    modules = [p for p in sorted(SRC.rglob("*.py")) if STORE not in p.parents]
    assert len(modules) > 50  # the scan sees the whole package
    assert [use for p in modules for use in sql_uses(p)] == []
    assert not hasattr(Store, "read")  # no raw query on the store's connection


def test_the_scan_finds_sql_where_there_is_some() -> None:
    assert any("SQL text" in u for u in sql_uses(STORE / "__init__.py"))
    assert any("sqlite3" in u for u in sql_uses(STORE / "sqlite_io.py"))


def test_the_core_store_names_no_plugin_field() -> None:
    tree = ast.parse((STORE / "__init__.py").read_text(encoding="utf-8"))
    texts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert [t for t in texts if re.search(rf"\$\.({'|'.join(PLUGINS)})\b", t)] == []
    assert not any(isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[1:2] == [p]
                   for n in ast.walk(tree) for p in PLUGINS)


def comp(text: str, **update: object) -> Completion:
    return Completion(text=text, tokens_in=10, tokens_out=2).model_copy(update=update)


def test_named_reads_of_records_steps_and_calls(tmp_path: Path) -> None:
    with contextlib.closing(Store(tmp_path)) as store:
        async def fill() -> None:
            for i in range(3):
                store.add_record(i, f"r{i}", [{"role": "user", "content": f"q{i}"}], {"n": i})
            store.add_step("r0", 0, "draft", 0, {"response": "a"}, status="done")
            store.add_error_row("r1", "draft", "ProviderError", "boom")
            store.add_call("k1", "generator", "m", comp("x"), "r0")
            store.add_call("k2", "critic", "m", comp("y", batch=True), "r2")
            await store.flush()

        asyncio.run(fill())
        assert store.pending_records() == [(2, "r2", [{"role": "user", "content": "q2"}], {"n": 2})]
        assert store.has_step("draft") and not store.has_step("label")
        assert set(store.call_responses()) == {"k1", "k2"}
        assert Completion.model_validate_json(store.call_responses()["k2"]).text == "y"
        # a boolean field of the stored answer, named by the caller, splits the totals
        assert set(store.token_totals(batch=True)) == {"critic"}
        assert set(store.token_totals(batch=False)) == {"generator"}
        assert store.token_totals(batch=True)["critic"]["calls"] == 1
        assert set(store.token_totals()) == {"generator", "critic"}
        assert store.token_totals(no_such_field=True) == {}  # a missing field reads as false


def test_batch_tables_round_trip(tmp_path: Path) -> None:
    rows = [{"custom_id": f"c{i}", "key": f"k{i}", "role": "critic", "record": "r0", "stage": "critique",
             "round": 1, "attempt": i + 1} for i in range(3)]
    with contextlib.closing(Store(tmp_path)) as store:
        tables = BatchTables(store)
        n = tables.add_job("tok", "openai", "openai:gpt", rows)
        tables.update_job(n, {"state": "open", "batch_id": "b1", "counts": {"done": 1}})
        with pytest.raises(ValueError, match="not an updatable batch column"):
            tables.update_job(n, {"requests": 9})
        job = tables.jobs(("open",))[0]
        assert (job["n"], job["batch_id"], job["counts"], job["requests"]) == (n, "b1", {"done": 1}, 3)
        assert tables.jobs(("ended",)) == [] and len(tables.jobs()) == 1
        assert set(tables.requests(n)) == {"c0", "c1", "c2"} and tables.requests(n)["c1"]["attempt"] == 2
        assert tables.in_flight(("creating", "open")) == [("critique", 1, "open", 3)]
        tables.end_job(n, [("c0", "done", None), ("c1", "failed", {"status": 400, "message": "bad"})], "completed",
                       {"done": 1, "failed": 1})
        asyncio.run(store.flush())
        assert tables.request_counts() == {"done": 1, "failed": 1, "expired": 1}  # c2 was not in the results
        assert [(k, s, e) for k, _, s, e, _ in tables.sent()] == [
            ("k0", "done", None), ("k1", "failed", {"status": 400, "message": "bad"}), ("k2", "expired", None)]
        assert tables.jobs()[0]["state"] == "ended" and tables.in_flight(("creating", "open")) == []
        m = tables.add_job("tok2", "openai", "openai:gpt", [{**rows[0], "custom_id": "c9"}])
        tables.drop_job(m)
        assert [j["n"] for j in tables.jobs()] == [n] and tables.requests(m) == {}


def test_a_store_without_batch_tables_reads_them_as_empty(tmp_path: Path) -> None:
    Store(tmp_path).close()
    with contextlib.closing(Store.open_run(tmp_path, readonly=True)) as store:
        tables = BatchTables(store)  # a read-only open creates nothing
        assert not tables.exists()
        assert (tables.jobs(), tables.sent(), tables.in_flight(("open",)), tables.request_counts()) == ([], [], [], {})


def load_worker() -> Any:
    """cai/cluster/worker.py on its own (the package's __init__ imports ray, which this test does not need)."""
    spec = importlib.util.spec_from_file_location("cai_cluster_worker", SRC / "cluster" / "worker.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_store_and_the_ray_workers_proxy_are_record_sinks() -> None:
    proxy = load_worker().StoreProxy
    members = [m for m in vars(RecordSink) if not m.startswith("_")]
    assert {"add_step", "add_call", "get_call", "flush", "broken"} <= set(members)
    for name in members:
        if name == "broken":
            continue
        want = inspect.signature(getattr(RecordSink, name))
        for impl in (Store, proxy):
            assert inspect.signature(getattr(impl, name)) == want, f"{impl.__name__}.{name}"
            assert inspect.iscoroutinefunction(getattr(impl, name)) == inspect.iscoroutinefunction(
                getattr(RecordSink, name)), f"{impl.__name__}.{name}"
    assert proxy({}, {}, {}).broken is None


def test_the_worker_needs_no_type_ignore() -> None:
    assert "type: ignore" not in (SRC / "cluster" / "worker.py").read_text(encoding="utf-8")
