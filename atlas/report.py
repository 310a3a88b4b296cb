"""``atlas report``: the atlas's analyses as one offline document, HTML or Markdown.

    atlas report -o report.html [--protocol kishino2026] [--view V] [--where SQL] [--textset T]
    report.write(db, "report.md", protocol="kishino2026")

Everything is read through the public ``Atlas`` API (the CLI opens the atlas read-only; nothing
is stored): the KL scale (``Atlas.scale_pairs``, summarised exactly as ``Atlas.scale``
does, with the pairs within 3 × a precision floor and the calibrated pairs' median
estimator/MC ratio where measured); with a protocol, the papers' numbers and orderings beside
its settings; the consecutive-checkpoint KLs and the diffusion exponents of every training run
(``Atlas.runs``, ``Atlas.trajectory``, ``Atlas.diffusion``); the stored calibrations and maps;
and the figures of atlas.analysis.figures for each.

Decisions:

* **References only where the setting matches.** The papers' numbers (protocol.REFERENCES) are
  for P1's settings, so they appear with ``--protocol kishino2026`` only: the general registry's
  settings are other rules (every seed, no view, other windows). Each is shown with the models
  it was measured on (Pythia-410M …), and "ours" is the median of the pairs whose keys name those
  same models (family ``pythia``, size ``410m``, the larger size, the interval's steps), blank
  when the atlas holds none: a number measured on other models is never put beside it. The
  fine-tune and random numbers were measured on hub models of every kind, so they stand beside
  the setting's median.
* **The ratio** is the stored estimator / Monte-Carlo ratio of the calibrated pairs (the
  estimator on raw vectors of the calibration's text set), whatever view the row is measured
  through; only calibrations on the scale's text set count.
* **Diffusion** fits each run with ``Run.default_window`` (the CLI's 10 lags, fewer for short
  runs) and the default ``min_t0``, on the scale's text set; ``--view`` passes to D_q, and
  ``--where`` keeps the runs with a checkpoint it selects. A run that cannot be fitted is
  listed with the reason. At the scale of the Hub (thousands of runs) the report stays a
  document: the first ``MAX_RUN_FITS`` runs (by label) are fitted and the first
  ``MAX_RUN_FIGURES`` of them drawn, and a line says how many were left out and that
  ``--where`` chooses others.
* **Files.** HTML is one self-contained file: figures are base64 PNG, the style inline, no
  script and no external link. Markdown links PNG files in ``STEM_files/`` beside it. Both are
  written under temporary names in the target folder and renamed into place at the end, so a
  refused input or a killed run leaves no partial report. Without matplotlib (the ``plot``
  extra) the report holds its tables and says how to get the figures.
"""

from __future__ import annotations

import base64
import html
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from atlas.analysis import calibration, scale
from atlas.analysis.protocol import orderings, references
from atlas.api import ModelQuery
from atlas.errors import AtlasError, StoreError
from atlas.extras import MissingExtraError, require
from atlas.files import remove_stale, replacing, temporary_beside
from atlas.keys import safe_name
from atlas.presentation import cell

if TYPE_CHECKING:
    from atlas.analysis.diffusion import Estimate
    from atlas.api import Atlas, Run, RunResult

SUFFIXES = (".html", ".md")
MAX_RUN_FITS = 100  # runs fitted (each a bootstrap) ...
MAX_RUN_FIGURES = 12  # ... and drawn (two figures each): a report of 10⁴ variants stays readable
CALIBRATION_SCHEMA = {"key_a": pl.String, "key_b": pl.String, "textset": pl.String,
                      "ratio": pl.Float64, "created_at": pl.Datetime}


class ReportError(AtlasError):
    """A report that cannot be written where or as it was asked."""


@dataclass(frozen=True)
class Table:
    caption: str
    frame: pl.DataFrame


@dataclass(frozen=True)
class Figure:
    name: str  # the file's stem, unique in the report
    caption: str
    draw: Callable[[Path], Path]  # writes the PNG at the path given


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


@dataclass
class Report:
    title: str
    paragraphs: list[str]
    sections: list[Section]

    @property
    def figures(self) -> list[Figure]:
        return [figure for section in self.sections for figure in section.figures]


# assembling ------------------------------------------------------------------------------------
def build(db: Atlas, *, protocol: str | None = None, view: str | None = None,
          where: str | None = None, textset: str | None = None, n_boot: int = 200) -> Report:
    """The report's content: tables, paragraphs and figures still to draw."""
    pairs = db.scale_pairs(where, textset, protocol=protocol, view=view)
    textset = textset or db.only_textset()
    scope = ", ".join(filter(None, [f"text set '{textset}'", where and f"where {where}",
                                    view and f"view {view}"]))
    intro = [f"Atlas {db.path}; {scope}. KL in bits/byte "
             "(Var(ℓa − ℓb) / (2 B̄ ln 2), method.md §3)."]
    calibrations = _calibrations(db)
    sections = [_scale_section(pairs, protocol),
                _diffusion_section(db, textset, view, where, n_boot),
                _calibration_section(calibrations), _map_section(db)]
    return Report(f"LM Atlas report: {db.path.name}", intro,
                  [section for section in sections if section is not None])


def _calibrations(db: Atlas) -> pl.DataFrame:
    """The stored calibrations; none on an atlas that predates the table."""
    try:
        return db.calibrations()
    except StoreError:
        return pl.DataFrame(schema=CALIBRATION_SCHEMA)


def _plot(name: str, *args) -> Callable[[Path], Path]:
    """A figure of atlas.analysis.figures, drawn when the report is written (matplotlib is
    imported only then, and only if installed)."""
    def draw(path: Path) -> Path:
        from atlas.analysis import figures

        return getattr(figures, name)(args[0], path, *args[1:])
    return draw


def _scale_section(pairs: pl.DataFrame, protocol: str | None) -> Section:
    summary = table = scale.summarise(pairs)
    section = Section("The KL scale")
    section.paragraphs.append(
        f"{'P1 (' + protocol + ')' if protocol else 'The general registry'}: "
        f"{pairs.height} pairs in {table.height} settings; statistics over the pairs of each. "
        + _calibration_note(table))
    beside = None if protocol is None else references(pairs)
    if beside is None:
        section.paragraphs.append("The papers' reference numbers are for P1's settings: "
                                  "`atlas report --protocol kishino2026` shows them.")
    else:
        table = table.join(_paper_column(beside), on="setting", how="left",
                           maintain_order="left")
    section.tables.append(Table("per setting (bits/byte)", table))
    if beside is not None:
        section.paragraphs.append(
            "`paper`: the papers' numbers (method.md §4) whose models the atlas holds; the "
            "table below lists them all, with `ours`, the median of our pairs of the same "
            "models (blank where the atlas holds none of them).")
        section.tables.append(Table("the papers' numbers beside ours", beside))
        section.tables.append(Table("the papers' ordering of settings (by median)",
                                    orderings(summary)))
    section.figures.append(Figure("scale", "the KL of every pair, by setting",
                                  _plot("plot_scale", pairs)))
    return section


def _calibration_note(summary: pl.DataFrame) -> str:
    parts = []
    if "est_over_mc" in summary.columns:
        parts.append("`calibrated`: pairs with a stored Monte-Carlo calibration on this text "
                     "set; `est_over_mc`: their median estimator / MC KL (the estimator on raw "
                     "vectors, whatever view the row is measured through).")
    else:
        parts.append("No Monte-Carlo calibration is stored (`atlas calibrate A B`).")
    if "within_floor" in summary.columns:
        parts.append(f"`within_floor`: pairs whose KL is under {calibration.FLOOR_FACTOR:g} × "
                     "the larger precision floor of the two: not to be told from rounding.")
    else:
        parts.append("No precision floor is stored (`atlas calibrate --floor KEY`).")
    return " ".join(parts)


def _paper_column(beside: pl.DataFrame) -> pl.DataFrame:
    """(setting, paper): per P1 setting, as one cell, the papers' numbers that have pairs of
    ours on the same models (``beside``: protocol.references)."""
    return beside.filter(pl.col("pairs") > 0).group_by("setting", maintain_order=True).agg(
        paper=pl.col("paper").map_elements(lambda v: f"{v:g}", return_dtype=pl.String)
        .str.join(" / "))


def _runs(db: Atlas, where: str | None) -> list[Run]:
    """The training runs with a checkpoint that ``where`` selects (every run without one)."""
    if where is None:
        return db.runs()
    clause = ModelQuery.where_clause(where) or where  # checked by the scale already
    chosen = set(db.sql("SELECT DISTINCT family, size, seed, quant FROM model_variants "
                        f"WHERE ({clause})").iter_rows())
    return [run for run in db.runs() if (run.family, run.size, run.seed, run.quant) in chosen]


def _diffusion_section(db: Atlas, textset: str, view: str | None, where: str | None,
                       n_boot: int) -> Section:
    section = Section("Training runs: consecutive checkpoints and diffusion (c_q, c_w, "
                      "α = c_q / c_w)")
    rows, failed = [], []
    runs = _runs(db, where)
    for index, run in enumerate(runs[:MAX_RUN_FITS]):
        name = f"{index:02d}-{safe_name(run.label)}"
        drawn = index < MAX_RUN_FIGURES
        try:
            if drawn:  # the consecutive KLs are only drawn: the table needs the fit alone
                path = db.trajectory(run, textset, view=view).value
                section.figures.append(Figure(f"trajectory-{name}", f"trajectory of {run.label}",
                                              _plot("plot_trajectory", path, run.label)))
            found = db.diffusion(run, run.default_window, textset=textset, n_boot=n_boot,
                                 view=view)
        except AtlasError as exc:
            failed.append(f"{run.label}: {exc}")
            continue
        rows.append(diffusion_row(run, found))
        if drawn:
            section.figures.append(Figure(f"diffusion-{name}", f"diffusion of {run.label}",
                                          _plot("plot_diffusion", found.value, run.label)))
    if len(runs) > MAX_RUN_FIGURES:
        section.paragraphs.append(
            f"{len(runs)} training runs: the first {min(len(runs), MAX_RUN_FITS)} (by label) are "
            f"fitted and the first {MAX_RUN_FIGURES} drawn; choose others with --where.")
    section.paragraphs.append(
        f"Every training run with a fit ({len(rows)} of {len(rows) + len(failed)}): overall "
        f"exponents with {n_boot} bootstrap draws' 95 % intervals over texts and starts "
        "(they do not cover seed-to-seed variation, the weight sketches' error, or the choice "
        "of window and min_t0); c_w and α need weight sketches.")
    if rows:
        section.tables.append(Table("per run", pl.DataFrame(rows)))
    section.paragraphs += [f"No fit: {reason}" for reason in failed]
    return section


def estimate_text(estimate: Estimate) -> str:
    """``1.11 [1.06, 1.15]``, the value alone without an interval, "n/a" without a value."""
    if estimate.value is None:
        return "n/a"
    interval = ("" if estimate.ci_low is None
                else f" [{estimate.ci_low:.4g}, {estimate.ci_high:.4g}]")
    return f"{estimate.value:.4g}{interval}"


def diffusion_row(run: Run, found: RunResult) -> dict:
    """One run's row of the diffusion table."""
    result = found.value
    return {"run": run.label, "textset": found.textset, "window": result.window,
            "min_t0": result.to_dict()["min_t0"], "starts": len(result.per_t0),
            "c_q": estimate_text(result.c_q), "c_w": estimate_text(result.c_w),
            "alpha": estimate_text(result.alpha), "notes": "; ".join(result.notes)}


def _calibration_section(calibrations: pl.DataFrame) -> Section | None:
    if calibrations.is_empty():
        return None
    section = Section("Calibration: the estimator against Monte-Carlo KL")
    try:
        fit = calibration.fit_loglog(calibrations)
        section.paragraphs.append(fit.describe())
    except calibration.CalibrationFitError as exc:
        fit = None
        section.paragraphs.append(f"No fit: {exc}")
    mc = calibration.with_mc_mean(calibrations)
    section.tables.append(Table("stored calibrations (bits/byte)", mc.select(
        "key_a", "key_b", "textset", "method", "estimator_bpb", "mc_bpb", "ratio", "dtype")))
    section.figures.append(Figure("calibration", "estimator vs Monte-Carlo KL",
                                  _plot("plot_calibration", calibrations, fit)))
    return section


def _map_section(db: Atlas) -> Section:
    section = Section("Maps")
    try:
        stored = db.maps()
    except AtlasError as exc:
        section.paragraphs.append(str(exc))
        return section
    if stored.is_empty():
        section.paragraphs.append("No map is stored: `atlas map --method tsne` fits one.")
        return section
    section.tables.append(Table("stored maps", stored.select(
        "name", "method", "textset", "n_models", "model_where", "created_at")))
    for index, name in enumerate(stored["name"].to_list()):
        section.figures.append(Figure(f"map-{index:02d}-{safe_name(name)}", f"map {name}",
                                      _plot("plot_map", db.map_points(name), f"map {name}")))
    return section


# drawing and writing ---------------------------------------------------------------------------
def check_output(path: Path) -> Path:
    """Refuse a path the report cannot be written to, before anything is computed."""
    if path.suffix.lower() not in SUFFIXES:
        raise ReportError(f"cannot write a report as {path} (-o): its suffix "
                          f"{path.suffix or '(none)'} is neither .html nor .md; name it e.g. "
                          "report.html or report.md")
    folder = path.parent
    if path.is_dir():
        raise ReportError(f"cannot write the report to {path} (-o): it is a folder; name a "
                          "file in it, e.g. report.html")
    problem = ("does not exist" if not folder.exists() else "is not a folder"
               if not folder.is_dir() else "is not writable"
               if not os.access(folder, os.W_OK | os.X_OK) else None)
    if problem:
        raise ReportError(f"cannot write the report to {path} (-o): {folder} {problem}; "
                          "choose a folder you can write to")
    return path


@dataclass
class Drawn:
    """The figures drawn (name → PNG file), those that could not be (name → why), and a note
    when none could because matplotlib is not installed."""

    files: dict[str, Path] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    note: str | None = None


def draw(report: Report, folder: Path) -> Drawn:
    """Each figure of ``report`` drawn as ``folder/NAME.png``."""
    try:
        require("drawing the report's figures", "matplotlib")
    except MissingExtraError as exc:
        return Drawn(note=f"Figures are left out: {exc}.")
    drawn = Drawn()
    for figure in report.figures:
        try:
            drawn.files[figure.name] = figure.draw(folder / f"{figure.name}.png")
        except AtlasError as exc:
            drawn.missing[figure.name] = str(exc)
    return drawn


def write(db: Atlas, path: str | Path, **options) -> Path:
    """Build the report (``build``'s options) and write it to ``path`` (.html or .md)."""
    path = check_output(Path(path))
    report = build(db, **options)
    try:
        if path.suffix.lower() == ".html":
            _write_html(report, path)
        else:
            _write_markdown(report, path)
    except OSError as exc:
        raise ReportError(f"cannot write the report to {path} (-o): {exc.strerror or exc}; "
                          "choose a folder you can write to") from None
    return path


def _replace(text: str, path: Path) -> None:
    with replacing(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def _write_html(report: Report, path: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        drawn = draw(report, Path(scratch))
        images = {name: f"data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"
                  for name, p in drawn.files.items()}
        _replace(to_html(report, images, drawn), path)


def _write_markdown(report: Report, path: Path) -> None:
    """The .md and its ``STEM_files/`` folder: the folder is drawn under a temporary name,
    swapped in for the old one, then the .md is renamed into place."""
    files = path.with_name(f"{path.stem}_files")
    remove_stale(path.parent, files.name)
    remove_stale(path.parent, files.name + ".old")
    scratch = temporary_beside(files)
    scratch.mkdir()
    try:
        drawn = draw(report, scratch)
        links = {name: f"{files.name}/{p.name}" for name, p in drawn.files.items()}
        text = to_markdown(report, links, drawn)
        if files.exists():
            old = temporary_beside(files.with_name(files.name + ".old"))
            files.rename(old)
            shutil.rmtree(old)
        scratch.rename(files)
        _replace(text, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# rendering -------------------------------------------------------------------------------------
def _text(value) -> str:
    """A cell as the report shows it: numbers as the CLI's tables (6 significant digits),
    missing values as a dash."""
    return "—" if value is None else cell(value)


STYLE = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;
color:#222}table{border-collapse:collapse;margin:.5rem 0 1.5rem;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}th{background:#f3f3f3}
caption{caption-side:top;text-align:left;font-weight:600;padding:.25rem 0}
img{max-width:100%}figure{margin:1rem 0}figcaption{color:#555;font-size:.9rem}
code{background:#f3f3f3;padding:0 .2rem}"""


def _inline(text: str) -> str:
    """Escaped HTML with `code` spans."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_text(v))}</td>" for v in row) + "</tr>"
                   for row in table.frame.iter_rows())
    return (f"<table><caption>{html.escape(table.caption)}</caption><thead><tr>{head}</tr>"
            f"</thead><tbody>{body}</tbody></table>")


def _html_figure(figure: Figure, images: dict[str, str], drawn: Drawn) -> str:
    caption = html.escape(figure.caption)
    if figure.name in drawn.missing:
        return f"<p>Figure {caption}: not drawn: {_inline(drawn.missing[figure.name])}</p>"
    if figure.name not in images:
        return ""
    return (f'<figure><img alt="{caption}" src="{images[figure.name]}">'
            f"<figcaption>{caption}</figcaption></figure>")


def to_html(report: Report, images: dict[str, str], drawn: Drawn) -> str:
    """One self-contained HTML page; ``images`` maps a figure's name to its data URI."""
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>"
             f"{html.escape(report.title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(report.title)}</h1>"]
    parts += [f"<p>{_inline(p)}</p>" for p in [*report.paragraphs,
                                                *filter(None, [drawn.note])]]
    for section in report.sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{_inline(p)}</p>" for p in section.paragraphs]
        parts += [_html_table(t) for t in section.tables]
        parts += [_html_figure(f, images, drawn) for f in section.figures]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _md_cell(value) -> str:
    return _text(value).replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    frame = table.frame
    lines = [f"**{table.caption}**", "", "| " + " | ".join(frame.columns) + " |",
             "|" + "---|" * frame.width]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines)


def _md_figure(figure: Figure, links: dict[str, str], drawn: Drawn) -> str:
    if figure.name in drawn.missing:
        return f"Figure {figure.caption}: not drawn: {drawn.missing[figure.name]}"
    return f"![{figure.caption}]({links[figure.name]})" if figure.name in links else ""


def to_markdown(report: Report, links: dict[str, str], drawn: Drawn) -> str:
    """The report in Markdown; ``links`` maps a figure's name to its path beside the file."""
    parts = [f"# {report.title}", *report.paragraphs, *filter(None, [drawn.note])]
    for section in report.sections:
        parts += [f"## {section.title}", *section.paragraphs]
        parts += [_md_table(t) for t in section.tables]
        parts += list(filter(None, (_md_figure(f, links, drawn) for f in section.figures)))
    return "\n\n".join(parts) + "\n"
