"""`atlas report` (atlas.report) and what it puts beside the scale: the papers' references
(atlas.analysis.protocol.REFERENCES) and the calibrations and precision floors of each setting
(as Atlas.scale counts them: atlas.analysis.calibration)."""

from __future__ import annotations

import datetime
import re
import sys
from html.parser import HTMLParser

import polars as pl
import protocol_world
import pytest
from click.testing import CliRunner

from atlas.analysis import calibration, protocol
from atlas.cli import main
from atlas.presentation import cell


def _calibration(key_a: str, key_b: str, ratio: float, day: int, textset: str = "eval") -> dict:
    return {"key_a": key_a, "key_b": key_b, "textset": textset, "ratio": ratio,
            "created_at": datetime.datetime(2026, 1, day)}


def test_a_pair_gets_its_latest_calibration_in_either_order_on_its_text_set_only():
    pairs = pl.DataFrame({"key_a": ["a", "a", "a"], "key_b": ["b", "c", "d"],
                          "textset": ["eval"] * 3, "kl": [0.5, 2.0, 1.0]})
    calibrations = pl.DataFrame([
        _calibration("b", "a", 4.0, 1),  # stored the other way round: still the pair a, b
        _calibration("a", "b", 6.0, 2),  # newer: the one that counts
        _calibration("a", "c", 9.0, 1, textset="other"),  # another text set: not this pair
    ])
    found = calibration.with_ratios(pairs, calibration.pair_ratios(calibrations))
    assert found["est_over_mc"].to_list() == [6.0, None, None]


def test_floor_flags_take_the_larger_floor_of_the_two():
    pairs = pl.DataFrame({"key_a": ["a", "a", "x"], "key_b": ["b", "c", "y"],
                          "textset": ["eval"] * 3, "kl": [0.5, 0.5, 0.5]})
    floors = pl.DataFrame({"key": ["a", "b"], "textset": ["eval", "eval"], "floor": [0.1, 0.2]})
    flagged = calibration.flag_floors(pairs, floors)
    assert flagged["floor"].to_list() == [0.2, 0.1, None]
    assert flagged["within_floor"].to_list() == [True, False, None]  # 0.5 < 3 × 0.2, not 3 × 0.1


def test_a_reference_matches_only_the_models_it_was_measured_on():
    seeds, later = (next(r for r in protocol.REFERENCES if r.setting == name)
                    for name in ("seeds", "later"))
    assert seeds.matches("pythia-410m/s1@step143000", "pythia-410m/s2@step143000")
    assert not seeds.matches("pythia-1b/s1@step143000", "pythia-1b/s2@step143000")
    assert not seeds.matches("mini-410m/s1@step143000", "mini-410m/s2@step143000")
    assert later.matches("pythia-410m@step100000", "pythia-410m@step101000")
    assert not later.matches("pythia-410m@step99000", "pythia-410m@step100000")
    assert not later.matches("pythia-410m/s1@step100000", "pythia-410m/s1@step101000")
    sizes = {r.other: r for r in protocol.REFERENCES if r.setting == "sizes"}
    assert sizes["1b"].matches("pythia-410m@step143000", "pythia-1b@step143000")
    assert not sizes["1.4b"].matches("pythia-410m@step143000", "pythia-1b@step143000")


def test_orderings_say_whether_the_papers_order_holds():
    summary = pl.DataFrame({"setting": ["early", "later", "quant-8bit", "quant-4bit"],
                            "median": [0.1, 0.05, 0.3, 0.2]})
    found = {(r["lower"], r["higher"]): r["holds"]
             for r in protocol.orderings(summary).iter_rows(named=True)}
    assert found[("later", "early")] is True
    assert found[("quant-8bit", "quant-4bit")] is False
    assert found[("seeds", "sizes")] is None  # not measured here


# the report on the synthetic Pythia atlas of tests/protocol_world.py ---------------------------
SEED_PAIR = ("pythia-410m/s1@step143000", "pythia-410m/s2@step143000")
FINAL_410M = "pythia-410m@step143000"
RATIO = 7.5
ONE_RUN = "family = 'pythia' AND size = '410m' AND seed IS NULL"
# fewer models and runs (a shorter test): two sizes, two seeds, and every model of the fine-tunes
P1_PART = "family <> 'pythia' OR size IN ('410m', '1b') AND (seed IS NULL OR seed IN (1, 2))"
NOT_PYTHIA = "family <> 'pythia'"  # no run at all


class Tables(HTMLParser):
    """The tables of an HTML page by caption: header and rows of cell texts; and every
    src/href value."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.links: list[str] = []
        self._rows: list[list[str]] | None = None
        self._text: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.links += [value or "" for name, value in attrs if name in ("src", "href")]
        if tag == "table":
            self._rows = []
        elif tag == "tr":
            self._rows.append([])
        elif tag in ("td", "th", "caption"):
            self._text = []

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "caption":
            self._caption, self._text = "".join(self._text), None
        elif tag in ("td", "th"):
            self._rows[-1].append("".join(self._text))
            self._text = None
        elif tag == "table":
            self.tables[self._caption] = self._rows


def _as_dicts(rows: list[list[str]]) -> dict[str, dict[str, str]]:
    """Rows keyed by their first cell, each a dict column → cell."""
    return {row[0]: dict(zip(rows[0], row, strict=True)) for row in rows[1:]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The protocol world with one calibration of a seeds pair, a precision floor of Pythia-410M
    at its final step (float16, as its vector was scored) and one stored map."""
    root = tmp_path_factory.mktemp("report")
    db, _, _ = protocol_world.build(root)
    db.sql("INSERT INTO calibrations (key_a, key_b, method, samples, length, seed, mc_ab_nats, "
           "mc_ab_se, mc_ab_bpb, mc_ab_se_bpb, mc_ba_nats, mc_ba_se, mc_ba_bpb, mc_ba_se_bpb, "
           "estimator_bpb, estimator_se, textset, ratio, device, dtype, versions) VALUES "
           f"('{SEED_PAIR[1]}', '{SEED_PAIR[0]}', 'rao-blackwell', 8, 16, 0, 1, 0.1, 1, 0.1, 1, "
           f"0.1, 1, 0.1, {RATIO}, 0.5, 'eval', {RATIO}, 'cpu', 'float32', '{{}}')")
    db.sql("INSERT INTO precision_floors VALUES "
           f"('{FINAL_410M}', 'float16', 'eval', 1e6, 0, 0, 'cpu', 1, '{{}}', now())")
    db.fit_map("pca", where="family = 'pythia' AND seed IS NULL AND step = 143000",
               name="pca-finals")
    db.create_view("p1", where=ONE_RUN)
    db.close()
    yield db, root
    db.close()


def _report(world, *args: str) -> str:
    db, root = world
    db.close()  # the CLI opens it read-only
    result = CliRunner().invoke(main, ["--db", str(root / "atlas.duckdb"), "report", *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def html_page(world):
    """The atlas, the parsed page, its file, and Atlas.scale and Atlas.scale_pairs as the page
    should show them."""
    db, root = world
    out = root / "report.html"
    _report(world, "-o", str(out), "--protocol", "kishino2026", "--boot", "20", "--where",
            P1_PART)
    page = Tables()
    page.feed(out.read_text(encoding="utf-8"))
    return (db, page, out, db.scale(protocol="kishino2026", where=P1_PART),
            db.scale_pairs(protocol="kishino2026", where=P1_PART))


def test_html_scale_rows_are_atlas_scale_with_calibration_and_floors(html_page):
    _, page, _, expected, _ = html_page
    rows = _as_dicts(page.tables["per setting (bits/byte)"])
    assert list(rows) == expected["setting"].to_list()
    for row in expected.iter_rows(named=True):
        shown = rows[row["setting"]]
        assert [shown[c] for c in expected.columns] == [
            "—" if v is None else cell(v) for v in row.values()]
    assert (rows["seeds"]["calibrated"], rows["seeds"]["est_over_mc"]) == ("1", cell(RATIO))
    assert {s for s, r in rows.items() if r["calibrated"] != "0"} == {"seeds"}
    assert {s: r["within_floor"] for s, r in rows.items() if r["within_floor"] != "0"} == {
        "sizes": "1", "quant-8bit": "1", "quant-4bit": "1", "later": "1"}  # pairs with 410m@143k
    assert {s: r["paper"] for s, r in rows.items() if r["paper"] != "—"} == {
        "early": "0.069 / 0.053", "later": "0.023", "seeds": "0.11",
        "sizes": "0.28", "fine-tune": "0.4", "random": "2.1"}  # P1_PART has no 1.4b …


def test_html_references_stand_beside_the_same_models_only(html_page):
    _, page, _, summary, pairs = html_page
    rows = page.tables["the papers' numbers beside ours"]
    found = {(r[0], r[1]): dict(zip(rows[0], r, strict=True)) for r in rows[1:]}

    def kl(setting, a, b):
        return pairs.filter(pl.col("setting") == setting, pl.col("key_a") == a,
                            pl.col("key_b") == b)["kl"].item()

    assert found[("sizes", "0.28")]["ours"] == cell(kl("sizes", FINAL_410M,
                                                       "pythia-1b@step143000"))
    assert found[("later", "0.023")]["ours"] == cell(kl("later", "pythia-410m@step100000",
                                                        "pythia-410m@step101000"))
    assert (found[("sizes", "0.52")]["ours"], found[("sizes", "0.52")]["pairs"]) == ("—", "0")
    seeds = pairs.filter(pl.col("setting") == "seeds")["kl"].median()
    assert (found[("seeds", "0.11")]["ours"], found[("seeds", "0.11")]["pairs"]) == (
        cell(seeds), "1")
    # the fine-tunes are llama/mistral models: the paper's pool, so the setting's median
    assert found[("fine-tune", "0.4")]["pairs"] == "3"
    order = {(r[0], r[1]): r[-1] for r in page.tables[
        "the papers' ordering of settings (by median)"][1:]}
    median = dict(summary.select("setting", "median").iter_rows())
    assert order[("quant-8bit", "quant-4bit")] == cell(median["quant-8bit"]
                                                       < median["quant-4bit"])


def test_html_diffusion_rows_are_atlas_diffusion(html_page):
    db, page, *_ = html_page
    rows = _as_dicts(page.tables["per run"])
    assert set(rows) == {run.label for run in db.runs()
                         if run.size in ("410m", "1b") and run.seed in (None, 1, 2)}
    run = db.run("pythia", "410m")
    result = db.diffusion(run, run.default_window, n_boot=20).value
    shown = rows["pythia-410m"]
    c_q = result.c_q
    assert shown["c_q"] == f"{c_q.value:.4g} [{c_q.ci_low:.4g}, {c_q.ci_high:.4g}]"
    assert (shown["window"], shown["min_t0"], shown["starts"]) == (
        "10", "1000", str(len(result.per_t0)))
    assert (shown["c_w"], shown["alpha"]) == ("n/a", "n/a")  # imported vectors: no weights


def test_html_is_one_self_contained_file(html_page):
    _, page, out, *_ = html_page
    text = out.read_text(encoding="utf-8")
    assert page.links and all(link.startswith("data:image/png;base64,") for link in page.links)
    assert "<script" not in text and "<link" not in text
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", text)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", text)
    assert captions[0] == "the KL of every pair, by setting"
    assert {"map pca-finals", "trajectory of pythia-410m", "diffusion of pythia-410m",
            "estimator vs Monte-Carlo KL"} <= set(captions)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def _md_rows(lines: list[str]) -> list[list[str]]:
    """The cells of the Markdown table at the head of ``lines`` (its separator left out)."""
    table = []
    for line in lines:
        if not line.startswith("|"):
            break
        table.append(line.strip("| ").split(" | "))
    return [table[0], *table[2:]]


def test_markdown_links_its_figures_and_where_and_view_pass_through(world, tmp_path):
    db = world[0]
    out = tmp_path / "x.md"
    _report(world, "-o", str(out), "--where", ONE_RUN, "--view", "p1", "--boot", "0")
    text = out.read_text(encoding="utf-8")
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert links and all((tmp_path / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
                         for link in links)
    assert sorted(p.name for p in (tmp_path / "x_files").iterdir()) == sorted(
        link.split("/", 1)[1] for link in links)
    lines = text.splitlines()
    start = lines.index("**per setting (bits/byte)**") + 2
    header, *rows = _md_rows(lines[start:])
    expected = db.scale(where=ONE_RUN, view="p1")
    assert header == expected.columns
    assert [row[:expected.width] for row in rows] == [
        ["—" if v is None else cell(v) for v in row] for row in expected.iter_rows()]
    assert "`atlas report --protocol kishino2026` shows them" in text
    run = db.run("pythia", "410m")
    c_q = db.diffusion(run, run.default_window, n_boot=0, view="p1").value.c_q.value
    assert re.findall(r"^\| (pythia[^ |]*) \| eval \| 10 \| 1000 \| 133 \| ([^ ]+) \|", text,
                      re.M) == [("pythia-410m", f"{c_q:.4g}")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.md", "x_files"]


def test_without_matplotlib_the_report_keeps_its_tables(world, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # find_spec then finds nothing
    out = tmp_path / "x.html"
    _report(world, "-o", str(out), "--where", ONE_RUN, "--boot", "0")
    text = out.read_text(encoding="utf-8")
    assert "pip install &#x27;lm-atlas[plot]&#x27;" in text and "<img" not in text
    assert "<caption>per setting (bits/byte)</caption>" in text


def test_a_failed_report_leaves_the_previous_one_whole(world, tmp_path, monkeypatch):
    from atlas.analysis import figures

    out = tmp_path / "x.md"
    _report(world, "-o", str(out), "--where", NOT_PYTHIA)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise RuntimeError("killed while drawing")

    monkeypatch.setattr(figures, "plot_map", broken)
    result = CliRunner().invoke(main, ["--db", str(world[1] / "atlas.duckdb"), "report", "-o",
                                       str(out), "--where", NOT_PYTHIA])
    assert isinstance(result.exception, RuntimeError)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_many_runs_are_fitted_and_drawn_up_to_a_cap(world, tmp_path, monkeypatch):
    """A Hub-sized atlas has thousands of runs: the report fits and draws the first ones only
    and says so."""
    from atlas import report

    runs = world[0].runs()
    assert len(runs) > 3
    monkeypatch.setattr(report, "MAX_RUN_FITS", 3)
    monkeypatch.setattr(report, "MAX_RUN_FIGURES", 2)
    out = tmp_path / "x.md"
    _report(world, "-o", str(out), "--boot", "0")
    text = out.read_text(encoding="utf-8")
    said = f"{len(runs)} training runs: the first 3 (by label) are fitted and the first 2 drawn"
    assert said in text
    fitted = re.findall(r"^\| (\S+) \| eval \| \d+ \|", text, re.M)
    assert fitted == [run.label for run in runs[:3]]
    drawn = sorted(p.name for p in (tmp_path / "x_files").iterdir()
                   if p.name.startswith(("trajectory-", "diffusion-")))
    assert len(drawn) == 4 and all(name.split("-")[1] in ("00", "01") for name in drawn)
