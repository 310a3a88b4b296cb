"""The Textual TUI (tui/) on a small hand-built atlas, driven by Textual's Pilot.

The atlas is tests/tui_world.py's (runs of checkpoints, seeds, sizes, a fine-tune, two text
sets, a map); the data layer under the screens is tested on it in tests/test_queries.py. Every
test runs the app read-only over the same file, whose bytes must never change.

Tests are plain functions that drive the app with ``asyncio.run`` (no pytest-asyncio needed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import polars as pl
import pytest

pytest.importorskip("textual")
pytest.importorskip("textual_plotext")

from textual.pilot import Pilot
from textual.widgets import DataTable, Input, OptionList, Select, TextArea
from tui_world import FINE_TUNE, N_MODELS, PARENT, TINY, build_world

from atlas import queries
from atlas import store as store_module
from atlas.api import Atlas, ModelQuery, Run
from atlas.errors import LockedError
from tui.app import AtlasApp
from tui.backend import Backend
from tui.history import HISTORY_ENV
from tui.render import LogScale, ScaleRow, number, scale_chart
from tui.screens import base
from tui.screens import models as models_screen
from tui.screens.detail import DetailScreen
from tui.screens.help import HelpScreen
from tui.screens.map import MapPlot, step_towards
from tui.widgets import Notice

SIZE = (100, 30)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


BUILT: dict[Path, str] = {}  # atlas file → its SHA-256 right after the build


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    path = build_world(tmp_path_factory.mktemp("tui"))
    BUILT[path] = _digest(path)
    return path


@pytest.fixture(autouse=True)
def history_file(tmp_path, monkeypatch) -> Path:
    """Each test's SQL history in a file of its own, never the user's."""
    path = tmp_path / "history" / "sql-history.jsonl"
    monkeypatch.setenv(HISTORY_ENV, str(path))
    return path


@pytest.fixture(scope="module")
def reader(world):
    handle = Atlas(world, read_only=True)
    yield handle
    handle.close()


# driving the app ------------------------------------------------------------------------------
async def settle(pilot: Pilot) -> None:
    """Until no worker runs and the messages they posted are handled (answers start jobs)."""
    app = pilot.app

    def idle() -> bool:  # the Models screen's filter also waits for a pause in typing
        return (not any(w.is_running for w in app.workers)
                and getattr(app.screen, "settled", True) and tables_laid_out())

    def tables_laid_out() -> bool:
        """DataTables size their columns to new rows on their next idle: until then a
        snapshot would show stale widths (a private flag; there is no public one)."""
        return not any(table._require_update_dimensions
                       for table in app.screen.query(DataTable))

    for _ in range(400):
        await pilot.pause()
        if idle():
            await pilot.pause()
            if idle():
                return
        await asyncio.sleep(0.02)
    raise AssertionError("workers still running")


async def until_rows(app: AtlasApp, pilot: Pilot, seconds: float = 5.0) -> None:
    """Settle until the Models table shows rows (a locked atlas answers on a later retry)."""
    for _ in range(int(seconds / 0.05)):
        await settle(pilot)
        if app.screen.query_one("#models", DataTable).row_count:
            return
        await asyncio.sleep(0.05)


def drive(path: Path, scenario: Callable[[AtlasApp, Pilot], Awaitable[None]],
          size: tuple[int, int] = SIZE) -> AtlasApp:
    async def main() -> AtlasApp:
        app = AtlasApp(path)
        async with app.run_test(size=size) as pilot:
            await settle(pilot)
            await scenario(app, pilot)
        return app

    return asyncio.run(main())


async def type_text(pilot: Pilot, text: str) -> None:
    await pilot.press(*[{" ": "space"}.get(c, c) for c in text])


def rows(table: DataTable) -> list[list[str]]:
    return [[str(v) for v in table.get_row_at(i)] for i in range(table.row_count)]


def column(table: DataTable, index: int = 0) -> list[str]:
    return [r[index] for r in rows(table)]


def notice(app: AtlasApp) -> Notice:
    return app.screen.query_one("#notice", Notice)


# pure parts --------------------------------------------------------------------------------------
def test_rulers_and_map_cursor():
    ruler = LogScale.around([0.05, 3.0], 20)
    assert (ruler.lo, ruler.hi) == (-2, 1)
    assert len(ruler.bar(0.05).plain) == 20
    assert len(ruler.bar(3.0).plain.strip()) > len(ruler.bar(0.05).plain.strip())
    chart = scale_chart([ScaleRow("seeds", 3, 0.2, 0.3, 0.5), ScaleRow("sizes", 2, 1, 2, 3)],
                        70).plain
    assert "seeds" in chart and "0.300 n=3" in chart and "0.1" in chart and "1" in chart
    xs, ys = [0.0, 1.0, 1.0, -1.0], [0.0, 0.0, 1.0, 0.0]
    assert step_towards(xs, ys, 0, "right") == 1
    assert step_towards(xs, ys, 0, "left") == 3
    assert step_towards(xs, ys, 0, "up") == 2
    assert step_towards(xs, ys, 1, "right") == 1  # nothing further right: stay


# models ------------------------------------------------------------------------------------------
def test_models_are_listed(world):
    async def scenario(app, pilot):
        table = app.screen.query_one("#models", DataTable)
        keys = column(table)
        assert len(keys) == N_MODELS
        assert keys[:2] == ["other-1b", "toy-m/s1@step0"]
        assert keys.index("toy-m/s1@step4") < keys.index("toy-m/s1@step16")
        assert rows(table)[1][1:4] == ["toy", "m", "1"]
        assert rows(table)[1][-1] == "eval"
        assert rows(table)[keys.index(PARENT)][-1] == "eval, tiny"

    drive(world, scenario)


def test_substring_filter(world):
    async def scenario(app, pilot):
        await pilot.press("slash")
        await type_text(pilot, "S2@STEP6")  # case-insensitive
        await settle(pilot)
        keys = column(app.screen.query_one("#models", DataTable))
        assert keys == ["toy-m/s2@step64", "toy-s/s2@step64"]
        app.screen.query_one("#filter", Input).value = ""
        await settle(pilot)
        assert app.screen.query_one("#models", DataTable).row_count == N_MODELS

    drive(world, scenario)


def test_where_filter(world):
    async def scenario(app, pilot):
        await pilot.press("slash")
        await type_text(pilot, "where ")
        app.screen.query_one("#filter", Input).value = "where size = 'm' and step >= 32"
        await settle(pilot)
        assert notice(app).kind == "hint"  # not applied before Enter
        await pilot.press("enter")
        await settle(pilot)
        keys = column(app.screen.query_one("#models", DataTable))
        assert keys == ["toy-m/s1@step32", "toy-m/s1@step64", "toy-m/s2@step32",
                        "toy-m/s2@step64"]
        assert notice(app).kind is None

    drive(world, scenario)


def test_bad_where_shows_an_error_inline(world):
    async def scenario(app, pilot):
        await pilot.press("slash")
        for clause in ("where stepp > 3", "where step >", "where 1=1; drop table models"):
            app.screen.query_one("#filter", Input).value = clause
            await pilot.press("enter")
            await settle(pilot)
            assert notice(app).kind == "error", clause
            assert notice(app).message.startswith("WHERE clause:")
            assert app.screen.query_one("#models", DataTable).row_count == N_MODELS
        assert "stepp" not in notice(app).message
        assert app.is_running

    drive(world, scenario)


def test_sort_by_key_binding_and_header_click(world):
    async def scenario(app, pilot):
        screen = app.screen
        table = screen.query_one("#models", DataTable)
        await pilot.press("s")  # key → family
        await settle(pilot)
        assert screen.query_spec.sort == "family"
        assert column(table, 1)[0] == "other"
        await pilot.press("S")
        await settle(pilot)
        assert screen.query_spec.descending
        assert column(table, 1)[0] == "toyft"
        assert [str(c.label) for c in table.columns.values()][1] == "family ▼"
        x = sum(c.get_render_width(table) for c in list(table.columns.values())[:2]) + 2
        await pilot.click("#models", offset=(x, 0))  # the size header
        await settle(pilot)
        assert screen.query_spec.sort == "size" and not screen.query_spec.descending
        assert column(table, 2)[0] == "1b"  # 1b names a number; m and s do not

    drive(world, scenario)


def test_models_page_on_scroll(world, reader, monkeypatch):
    """Pages of 10 rows (500 in use): the first page and the count, then more as the cursor
    or the view nears the end, in the same order as one query for all."""
    monkeypatch.setattr(models_screen, "PAGE_ROWS", 10)
    monkeypatch.setattr(models_screen, "PREFETCH_ROWS", 3)

    async def scenario(app, pilot):
        screen, table = app.screen, app.screen.query_one("#models", DataTable)
        status = app.screen.query_one("#status")
        assert table.row_count == 10
        assert str(status.render()).startswith(f"showing 1–10 of {N_MODELS} variants")
        table.move_cursor(row=8)  # within PREFETCH_ROWS of the end
        await settle(pilot)
        assert table.row_count == 20
        for _ in range(5):
            table.scroll_end(animate=False)
            await settle(pilot)
        assert table.row_count == screen.loaded == N_MODELS
        assert str(status.render()).startswith(f"{N_MODELS} variants · sorted by key")
        everything = reader.model_page(ModelQuery(), 0, 100).rows
        assert column(table) == everything["key"].to_list()
        await pilot.press("slash", "s", "1")  # a filter starts again from its first page
        await settle(pilot)
        assert table.row_count == 10 and screen.page.matching == 17  # toyft-m/s1 too

    drive(world, scenario, size=(100, 12))  # 5 rows in view


def test_group_by_family(world):
    async def scenario(app, pilot):
        screen, table = app.screen, app.screen.query_one("#models", DataTable)
        commands = {c.title: c for c in app.get_system_commands(screen)}
        assert {"Filter", "Sort", "Reverse", "Group by family", "Reload"} <= set(commands)
        await commands["Group by family"].callback()  # the palette runs the screen's actions
        await settle(pilot)
        assert [str(c.label) for c in table.columns.values()][:2] == ["family ▲", "variants"]
        assert rows(table) == [["other", "1", "1", "0", "0", "0", "0"],
                               ["toy", "32", "2", "2", "8", "0", "0"],
                               ["toyft", "1", "1", "1", "1", "0", "0"]]
        assert "3 families · 34 variants" in str(screen.query_one("#status").render())
        await pilot.press("s", "S")  # by number of variants, most first
        await settle(pilot)
        assert column(table) == ["toy", "other", "toyft"]
        await pilot.press("enter")  # the family's variants
        await settle(pilot)
        assert screen.query_one("#filter", Input).value == "where family = 'toy'"
        assert table.row_count == 32 and not screen.query_spec.grouped
        assert set(column(table, 1)) == {"toy"}
        # grouping keeps the filter; Enter on a family adds it to the filter
        screen.query_one("#filter", Input).value = "S2@"
        await settle(pilot)
        await pilot.press("g")
        await settle(pilot)
        assert rows(table) == [["toy", "16", "2", "1", "8", "0", "0"]]
        await pilot.press("enter")
        await settle(pilot)
        assert table.row_count == 16 and set(column(table, 1)) == {"toy"}
        assert screen.query_spec.where == "family = 'toy' and contains(lower(key), 's2@')"

    drive(world, scenario)


# detail ------------------------------------------------------------------------------------------
def test_detail_nearest_and_related(world, reader):
    async def scenario(app, pilot):
        table = app.screen.query_one("#models", DataTable)
        table.move_cursor(row=table.get_row_index(PARENT))
        await pilot.press("enter")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DetailScreen) and screen.key == PARENT
        nearest = rows(screen.query_one("#nearest", DataTable))
        expected = reader.nearest(PARENT, k=10, textset="eval")
        assert [r[1] for r in nearest] == expected["key"].to_list()
        assert nearest[0][2] == number(expected["kl"][0])
        assert all(len(r[4]) == 20 for r in nearest)  # the log-scale ruler
        related = {(r[0], r[1]): r[2] for r in rows(screen.query_one("#related", DataTable))}
        assert set(related) == {("fine-tune", FINE_TUNE),
                                ("previous checkpoint", "toy-m/s1@step32"),
                                ("other seed", "toy-m/s2@step64"),
                                ("other size", "toy-s/s1@step64")}
        assert related[("other seed", "toy-m/s2@step64")] == number(
            reader.kl(PARENT, "toy-m/s2@step64", "eval").value)
        provenance = str(screen.query_one("#provenance").render())
        assert "eval (N=48" in provenance and "tiny (N=12" in provenance
        await pilot.press("x")  # the other text set
        await settle(pilot)
        assert screen.textset == "tiny"
        nearest = rows(screen.query_one("#nearest", DataTable))
        assert sorted(r[1] for r in nearest) == sorted(set(TINY) - {PARENT})
        related = {r[1]: r[2] for r in rows(screen.query_one("#related", DataTable))}
        assert related[FINE_TUNE] == number(reader.kl(PARENT, FINE_TUNE, "tiny").value)
        assert related["toy-m/s2@step64"] == "n/a"
        assert notice(app).kind == "hint" and "no vector on tiny" in notice(app).message
        await pilot.press("x")
        await settle(pilot)
        assert screen.textset == "eval"
        # Enter on the fine-tune opens it, with the KL to its parent
        screen.query_one("#related", DataTable).focus()
        await pilot.press("enter")
        await settle(pilot)
        assert app.screen.key == FINE_TUNE
        related = rows(app.screen.query_one("#related", DataTable))
        assert related[0][:3] == ["parent", PARENT,
                                  number(reader.kl(FINE_TUNE, PARENT, "eval").value)]
        await pilot.press("escape", "escape")
        assert app.screen.query("#models")

    drive(world, scenario)


def test_detail_jumps_to_the_run(world):
    async def scenario(app, pilot):
        app.open_model("toy-s/s2@step8")
        await settle(pilot)
        await pilot.press("t")
        await settle(pilot)
        assert app.current_mode == "trajectory"
        assert app.screen.run.label == "toy-s/s2"

    drive(world, scenario)


# SQL console ------------------------------------------------------------------------------------
def test_sql_console_runs_shows_errors_and_keeps_history(world):
    async def scenario(app, pilot):
        await pilot.press("2")
        await settle(pilot)
        assert app.current_mode == "sql"
        editor = app.screen.query_one("#editor", TextArea)
        assert app.focused is editor
        editor.text = "SELECT count(*) AS n, kl('toy-m/s1@step0', 'toy-m/s1@step1') AS kl\n" \
                      "FROM model_variants"
        await pilot.press("ctrl+enter")
        await settle(pilot)
        results = app.screen.query_one("#results", DataTable)
        assert [str(c.label) for c in results.columns.values()] == ["n", "kl"]
        assert rows(results)[0][0] == str(N_MODELS)
        assert notice(app).kind is None
        for bad in ("SELEC 1", "DELETE FROM models", "INSERT INTO models (key) VALUES ('x')",
                    "CREATE TABLE t AS SELECT 1"):
            editor.text = bad
            await pilot.press("ctrl+j")
            await settle(pilot)
            assert notice(app).kind == "error", bad
        assert "read-only" in notice(app).message
        history = app.screen.query_one("#history", OptionList)
        assert history.option_count == 5
        assert str(history.get_option_at_index(4).prompt).startswith("✓ 1 rows")
        editor.focus()
        await pilot.press("f4")  # F-keys switch screens even from the editor, where "3" is text
        await settle(pilot)
        assert app.current_mode == "scale" and "3" not in editor.text
        await pilot.press("f3")
        await settle(pilot)
        assert app.current_mode == "sql"
        history.focus()
        history.highlighted = 4
        await pilot.press("enter")
        assert editor.text.startswith("SELECT count(*)")

    drive(world, scenario)


def test_sql_history_is_kept_across_sessions(world, history_file):
    async def first(app, pilot):
        await pilot.press("2")
        editor = app.screen.query_one("#editor", TextArea)
        for query in ("SELECT 1 AS one", "SELECT 2 AS two", "SELECT 1 AS one"):
            editor.text = query
            await pilot.press("ctrl+enter")
            await settle(pilot)

    drive(world, first)
    saved = [json.loads(line) for line in history_file.read_text().splitlines()]
    assert [entry["query"] for entry in saved] == ["SELECT 1 AS one", "SELECT 2 AS two"]

    async def second(app, pilot):
        await pilot.press("2")
        await settle(pilot)
        screen = app.screen
        assert screen.query_one("#history", OptionList).option_count == 2
        editor = screen.query_one("#editor", TextArea)
        editor.text = "SELECT 'draft'"
        await pilot.press("ctrl+up")
        assert editor.text == "SELECT 1 AS one"
        await pilot.press("ctrl+up", "ctrl+up")  # stops at the oldest
        assert editor.text == "SELECT 2 AS two"
        await pilot.press("ctrl+down", "ctrl+down")
        assert editor.text == "SELECT 'draft'"
        await pilot.press("ctrl+enter")
        await settle(pilot)
        assert screen.query_one("#history", OptionList).option_count == 3

    drive(world, second)
    assert len(history_file.read_text().splitlines()) == 3


def test_sql_streams_exports_and_cancels(world, reader, tmp_path):
    calls: list[tuple[int, int]] = []
    result = reader.sql_head("SELECT * FROM range(100000) t(i)",
                             progress=lambda shown, rows: calls.append((shown.height, rows)))
    assert result.rows == 100_000 and result.shown.height == queries.SQL_DISPLAY_ROWS
    assert calls[0] == (queries.SQL_DISPLAY_ROWS, queries.SQL_BATCH_ROWS)  # after 1st batch
    assert result.shown["i"].to_list() == list(range(queries.SQL_DISPLAY_ROWS))

    async def scenario(app, pilot):
        await pilot.press("2")
        screen = app.screen
        screen.query_one("#editor", TextArea).text = "SELECT * FROM range(5000) t(i)"
        await pilot.press("ctrl+enter")
        await settle(pilot)
        assert screen.query_one("#results", DataTable).row_count == queries.SQL_DISPLAY_ROWS
        assert str(screen.query_one("#sql-status").render()).startswith(
            "5,000 rows × 1 columns in")
        titles = [c.title for c in app.get_system_commands(screen)]
        assert {"Run", "Older", "Newer", "Editor", "Export"} <= set(titles)
        assert "Cancel" not in titles
        await pilot.press("ctrl+s")  # all 5,000 rows, not only the 500 shown
        app.screen.query_one("#export-path", Input).value = str(tmp_path / "result.csv")
        await pilot.press("enter")
        await settle(pilot)
        assert (tmp_path / "result.csv").read_text().splitlines()[:2] == ["i", "0"]
        assert len((tmp_path / "result.csv").read_text().splitlines()) == 5001
        assert str(screen.query_one("#sql-status").render()).startswith("wrote 5,000 rows")
        screen.query_one("#editor", TextArea).text = (
            "SELECT count(*) FROM range(10000000000) t(i) WHERE i % 7 = 3")
        await pilot.press("ctrl+enter")
        for _ in range(100):  # until the query runs, DuckDB takes the interrupt
            await asyncio.sleep(0.05)
            await pilot.press("ctrl+g")
            if not screen.busy("query"):
                break
        await settle(pilot)
        assert notice(app).kind == "hint" and notice(app).message == "Query cancelled."
        assert str(screen.query_one("#sql-status").render()) == "cancelled"
        assert screen.query_one("#history", OptionList).option_count == 1  # not remembered

    drive(world, scenario)


# scale, trajectory, diffusion, map ---------------------------------------------------------------
def test_scale_screen(world, reader):
    async def scenario(app, pilot):
        await pilot.press("3")
        await settle(pilot)
        expected = reader.scale(textset="eval")
        stats = rows(app.screen.query_one("#stats", DataTable))
        assert [r[0] for r in stats] == expected["setting"].to_list()
        assert stats[0][2] == number(expected["median"][0])
        chart = str(app.screen.query_one("#chart").render())
        for setting in ("consecutive-early", "seeds", "fine-tune"):
            assert setting in chart
        assert "log scale" in chart
        where = app.screen.query_one("#where", Input)
        where.focus()
        where.value = "where size = 'm'"
        await pilot.press("enter")
        await settle(pilot)
        assert "sizes" not in column(app.screen.query_one("#stats", DataTable))
        select = app.screen.query_one("#textset", Select)
        assert not select.disabled
        select.value = "tiny"
        await settle(pilot)
        assert app.screen.textset == "tiny"
        assert "fine-tune" in column(app.screen.query_one("#stats", DataTable))
        where.value = "where nosuch = 1"
        await pilot.press("enter")
        await settle(pilot)
        assert notice(app).kind == "error" and "nosuch" in notice(app).message

    drive(world, scenario)


def _calibrated_copy(world: Path, root: Path) -> Path:
    """The world, copied, with its vectors marked as scored in float32, a float32 precision
    floor of PARENT (so large that every pair of it is within 3 floors) and a calibration of
    PARENT's seeds pair."""
    path = root / "atlas.duckdb"
    shutil.copy(world, path)
    db = Atlas(path)
    db.sql("""UPDATE vector_rows SET provenance = '{"dtype": "float32"}'""")
    db.store.set_floor({"key": PARENT, "dtype": "float32", "textset": "eval", "kl_bpb": 1e9,
                        "se": 0.0, "batch_kl_bpb": 0.0, "device": "cpu", "batch_size": 8,
                        "versions": "{}"})
    mc = {f"{d}_{m}": 0.1 for d in ("mc_ab", "mc_ba") for m in ("nats", "se", "bpb", "se_bpb")}
    db.store.add_calibration({"key_a": "toy-m/s2@step64", "key_b": PARENT, "method": "sequence",
                              "samples": 8, "length": 8, "seed": 0, **mc, "textset": "eval",
                              "estimator_bpb": 0.15, "ratio": 1.5, "device": "cpu",
                              "dtype": "float32", "versions": "{}"})
    db.close()
    return path


def test_scale_screen_shows_floors_and_calibrations(world, tmp_path):
    path = _calibrated_copy(world, tmp_path)
    with Atlas(path, read_only=True) as handle:
        expected = handle.scale(textset="eval")

    async def scenario(app, pilot):
        await pilot.press("3")
        await settle(pilot)
        table = app.screen.query_one("#stats", DataTable)
        headings = [str(c.label) for c in table.columns.values()]
        assert headings[-2:] == ["≤3 floors", "est/MC"]
        shown = {r[0]: r[-2:] for r in rows(table)}
        for r in expected.iter_rows(named=True):
            assert shown[r["setting"]][0] == f"{r['within_floor']}/{r['count']}"
        assert shown["seeds"] == ["1/2", "1.50 (1)"]  # PARENT's pair of the two
        assert shown["consecutive-early"][1] == "—"

    drive(path, scenario)


def test_detail_flags_the_nearest_within_floors(world, tmp_path):
    path = _calibrated_copy(world, tmp_path)  # PARENT's floor: every pair of it is within
    with Atlas(path, read_only=True) as handle:
        expected = handle.nearest(PARENT, k=10, textset="eval")

    async def scenario(app, pilot):
        app.open_model(PARENT)
        await settle(pilot)
        table = app.screen.query_one("#nearest", DataTable)
        assert [str(c.label) for c in table.columns.values()][-1] == "≤3 floors"
        shown = rows(table)
        assert [r[1] for r in shown] == expected["key"].to_list()
        assert [r[-1] for r in shown] == ["within" if w else "" for w in expected["within_floor"]]
        assert shown and all(r[-1] == "within" for r in shown)

    drive(path, scenario)


def test_detail_cells_follow_the_columns_as_they_were_added(world):
    """A floor flag shown first and hub ids added by a later load (another text set) keep each
    value under its own heading."""
    async def scenario(app, pilot):
        app.open_model(PARENT)
        await settle(pilot)
        screen = app.screen
        nearest = screen.detail.nearest
        screen.loaded_detail(dataclasses.replace(
            screen.detail, nearest=nearest.with_columns(within_floor=pl.lit(True))))
        screen.loaded_detail(dataclasses.replace(screen.detail, nearest=nearest.with_columns(
            within_floor=pl.lit(True), hub_id=pl.lit("org/model"))))
        table = screen.query_one("#nearest", DataTable)
        headings = [str(c.label) for c in table.columns.values()]
        assert headings[-2:] == ["≤3 floors", "hub id"]
        assert all(r[-2:] == ["within", "org/model"] for r in rows(table)) and rows(table)

    drive(world, scenario)


def test_trajectory_screen(world, reader):
    async def scenario(app, pilot):
        await pilot.press("4")
        await settle(pilot)
        screen = app.screen
        assert screen.run.label == "toy-m/s1"
        table = rows(screen.query_one("#steps", DataTable))
        expected = reader.trajectory(reader.run("toy", "m", 1)).value
        assert [r[:2] for r in table] == [[str(a), str(b)] for a, b in
                                          expected.select("step", "next_step").rows()]
        assert table[-1][2] == number(expected["kl"][-1])
        plot = screen.query_one("#plot")
        assert "toy-m/s1" in plot.plt.build()
        screen.choose(Run.ident_of("toy", "s", 2))
        await settle(pilot)
        # a run without weight sketches (the diffusion fit needs them; the trajectory not)
        assert rows(screen.query_one("#steps", DataTable))[0][2] == number(
            reader.kl("toy-s/s2@step0", "toy-s/s2@step1").value)

    drive(world, scenario)


def test_diffusion_screen(world, reader):
    async def scenario(app, pilot):
        await pilot.press("5")
        await settle(pilot)
        screen = app.screen
        fit = reader.diffusion(reader.run("toy", "m", 1), window=3, n_boot=200).value
        table = rows(screen.query_one("#fits", DataTable))
        assert table[0][0] == "overall"
        assert table[0][1].startswith(number(fit.c_q.value) + " [")
        assert table[0][2].startswith(number(fit.c_w.value) + " [")
        assert table[0][3].startswith(number(fit.alpha.value) + " [")
        assert [r[0] for r in table[1:]] == [str(r.t0) for r in fit.per_t0]
        assert "D_q" in screen.query_one("#plot").plt.build()
        assert "D_w" in screen.query_one("#plot").plt.build()
        window = screen.query_one("#window", Input)
        window.focus()
        window.value = "4"
        await pilot.press("enter")
        await settle(pilot)
        assert screen.result.window == 4 and len(screen.result.per_t0) == 4
        window.value = "40"
        await pilot.press("enter")
        await settle(pilot)  # clipped to the run's 7 lags
        assert screen.result.window == 7
        # a run without weight sketches: c_q only, said so
        screen.choose(Run.ident_of("toy", "s", 1))
        await settle(pilot)
        assert rows(screen.query_one("#fits", DataTable))[0][2] == "—"
        assert "no weight sketches" in str(screen.query_one("#notes").render())

    drive(world, scenario)


def test_map_screen_moves_and_opens(world, reader):
    async def scenario(app, pilot):
        await pilot.press("6")
        await settle(pilot)
        plot = app.screen.query_one("#plot", MapPlot)
        assert plot.points.height == N_MODELS
        assert app.focused is plot
        expected = reader.map_points("pca-eval").sort("key")
        assert plot.points["key"].to_list() == expected["key"].to_list()
        start = plot.cursor
        await pilot.press("right")
        moved = plot.cursor
        assert moved != start and plot.points["x"][moved] > plot.points["x"][start]
        assert plot.points["key"][moved] in str(app.screen.query_one("#point").render())
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, DetailScreen)
        assert app.screen.key == plot.points["key"][moved]
        await pilot.press("escape")
        assert app.current_mode == "map" and app.screen.query("#plot")

    drive(world, scenario)


# global ------------------------------------------------------------------------------------------
def test_every_screen_fits_80x24(world):
    async def scenario(app, pilot):
        for key in "123456":
            await pilot.press(key)
            await settle(pilot)
            assert app.current_mode, key
            footer = app.screen.query_one("Footer")
            assert footer.region.y == 23 and footer.region.height == 1
            assert notice(app).kind in (None, "hint"), (key, notice(app).message)
            body = {"1": "#models", "2": "#results", "3": "#chart", "4": "#plot",
                    "5": "#plot", "6": "#plot"}[key]
            region = app.screen.query_one(body).region
            assert region.height >= 3 and region.right <= 80, key
            if key == "2":  # the editor holds the focus: leave it so digits switch screens
                await pilot.press("escape")

    drive(world, scenario, size=(80, 24))


def test_help_theme_palette_and_quit(world):
    async def scenario(app, pilot):
        await pilot.click("ModeBar", offset=(21, 0))  # " 2 SQL " in the mode bar
        await settle(pilot)
        assert app.current_mode == "sql"
        await pilot.press("escape", "1")
        assert app.current_mode == "models"
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        assert app.theme == "textual-dark"
        await pilot.press("ctrl+t")
        assert app.theme == "textual-light"
        await pilot.press("6")  # plots redraw in the new theme without error
        await settle(pilot)
        await pilot.press("ctrl+t")
        await settle(pilot)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for label in ("Models", "SQL", "Scale", "Trajectory", "Diffusion", "Map"):
            assert f"Screen: {label}" in titles
        assert "Toggle light/dark theme" in titles and "Help" in titles
        command = next(c for c in app.get_system_commands(app.screen)
                       if c.title == "Screen: Scale")
        command.callback()
        await settle(pilot)
        assert app.current_mode == "scale"
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running

    drive(world, scenario)


def test_model_commands_open_a_model(world):
    from tui.app import ModelCommands

    async def scenario(app, pilot):
        provider = ModelCommands(app.screen)
        hits = [hit async for hit in provider.search("ftm/s1")]
        assert hits and hits[0].text == FINE_TUNE
        hits[0].command()
        await settle(pilot)
        assert app.screen.key == FINE_TUNE

    drive(world, scenario)


def test_locked_atlas_is_retried_with_a_notice(world, monkeypatch):
    monkeypatch.setattr(base, "LOCK_RETRY_SECONDS", 0.05)
    original = Backend.call
    failures = {"left": 2}

    def flaky(self, job):
        if failures["left"]:
            failures["left"] -= 1
            raise LockedError(f"{self.path} is locked by another process (PID 1)")
        return original(self, job)

    monkeypatch.setattr(Backend, "call", flaky)
    seen: list[tuple[str, str]] = []
    show = Notice.show

    def record(self, message, kind="error"):
        seen.append((kind, message))
        show(self, message, kind)

    monkeypatch.setattr(Notice, "show", record)

    async def scenario(app, pilot):
        await until_rows(app, pilot)
        assert app.screen.query_one("#models", DataTable).row_count == N_MODELS
        assert notice(app).kind is None  # cleared once the atlas answered

    drive(world, scenario)
    locked = [message for kind, message in seen if kind == "locked"]
    assert len(locked) == 2
    assert "locked by another process" in locked[0] and "press r to retry" in locked[0]
    assert "attempt 2" in locked[1]


def test_atlas_locked_by_another_process(world, tmp_path, monkeypatch):
    """A real writer in another process (as an ingest is): a notice, retries, no traceback;
    the rows come once it lets go."""
    monkeypatch.setattr(store_module, "LOCK_RETRY_SECONDS", 0.2)
    monkeypatch.setattr(base, "LOCK_RETRY_SECONDS", 0.1)
    copy = tmp_path / "locked.duckdb"
    shutil.copy(world, copy)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
         "print('locked', flush=True); time.sleep(60)", str(copy)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"

    async def scenario(app, pilot):
        try:
            for _ in range(100):
                await asyncio.sleep(0.05)
                if notice(app).kind == "locked":
                    break
            assert notice(app).kind == "locked"
            assert "locked by another process" in notice(app).message
            assert app.screen.query_one("#models", DataTable).row_count == 0
        finally:
            holder.kill()
            holder.wait()
        await until_rows(app, pilot)
        assert app.screen.query_one("#models", DataTable).row_count == N_MODELS
        assert notice(app).kind is None

    drive(copy, scenario)


def test_missing_atlas_is_a_notice(tmp_path):
    async def scenario(app, pilot):
        assert notice(app).kind == "error"
        assert "no atlas here" in notice(app).message
        await pilot.press("3")
        await settle(pilot)
        assert notice(app).kind == "error"

    drive(tmp_path / "missing.duckdb", scenario)
    assert not (tmp_path / "missing.duckdb").exists()


# snapshots ---------------------------------------------------------------------------------------
def _snapshot(snap_compare, world, keys: str, size=(80, 24)) -> bool:
    async def run_before(pilot):
        await settle(pilot)
        for key in keys.split():
            await pilot.press(key)
            await settle(pilot)

    return snap_compare(AtlasApp(world), terminal_size=size, run_before=run_before)


HAVE_SNAPSHOTS = importlib.util.find_spec("pytest_textual_snapshot") is not None


@pytest.mark.skipif(not HAVE_SNAPSHOTS, reason="pytest-textual-snapshot is not installed")
@pytest.mark.parametrize("keys", [
    pytest.param("", id="models"),
    pytest.param("g", id="grouped"),
    pytest.param("ctrl+t", id="models-light"),
    pytest.param("2 escape", id="sql"),
    pytest.param("down down enter", id="detail"),
    pytest.param("3", id="scale"),
    pytest.param("4", id="trajectory"),
    pytest.param("5", id="diffusion"),
    pytest.param("6", id="map"),
])
def test_snapshots(request, world, keys):
    """SVG snapshots at 80×24 (update with --snapshot-update after a deliberate change)."""
    snap_compare = request.getfixturevalue("snap_compare")
    assert _snapshot(snap_compare, world, keys)


def test_the_atlas_file_was_never_modified(world):
    """Last in the module: every test above opened this file through the TUI (SQL writes
    included) and none of them may have changed a byte of it or left a WAL beside it."""
    assert _digest(world) == BUILT[world]
    assert sorted(p.name for p in world.parent.iterdir() if p.name.startswith("atlas")) == [
        "atlas.duckdb"]
