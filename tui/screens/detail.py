"""One model: provenance, nearest models by KL (with a log-scale ruler) and related variants."""

from __future__ import annotations

from functools import partial
from typing import ClassVar

from rich.markup import escape
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Static

from atlas.api import Atlas, Detail
from tui.render import LogScale, number, params
from tui.screens.base import AtlasScreen
from tui.widgets import ModeBar, Notice

RULER_WIDTH = 20
# nearest's columns that only some atlases have → heading: hub ids of an imported release, and
# the floor flag (KL within 3 precision floors: rounding, not a difference; atlas calibrate)
OPTIONAL = {"hub_id": "hub id", "within_floor": "≤3 floors"}


def _optional(column: str, value) -> Text | str:
    if column == "within_floor":
        return Text("within", style="yellow") if value else ""
    return escape(value or "")


class DetailScreen(AtlasScreen):
    """Pushed over the models or map screen; Escape goes back."""

    DEFAULT_CSS = """
    DetailScreen #title { height: 1; padding: 0 1; background: $boost; text-style: bold; }
    DetailScreen #provenance { height: auto; padding: 0 1; color: $text-muted; }
    DetailScreen .heading { height: 1; padding: 0 1; text-style: bold; }
    DetailScreen #nearest { height: 1fr; min-height: 4; }
    DetailScreen #related { height: auto; max-height: 1fr; min-height: 3; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("x", "next_textset", "Text set"),
        Binding("t", "show_run('trajectory')", "Trajectory"),
        Binding("d", "show_run('diffusion')", "Diffusion"),
        Binding("r", "reload", "Reload", show=False),
    ]

    def __init__(self, key: str, textset: str | None = None) -> None:
        super().__init__()
        self.key = key
        self.textset = textset
        self.detail: Detail | None = None

    def compose(self) -> ComposeResult:
        yield ModeBar()
        yield Static(escape(self.key), id="title")
        yield Static("loading…", id="provenance")
        yield Static("Nearest models", classes="heading", id="nearest-heading")
        yield DataTable(id="nearest", cursor_type="row", zebra_stripes=True)
        yield Static("Related variants", classes="heading", id="related-heading")
        yield DataTable(id="related", cursor_type="row", zebra_stripes=True)
        yield Notice(id="notice")
        yield Footer()

    def on_mount(self) -> None:
        nearest = self.query_one("#nearest", DataTable)
        for label, key in (("#", "rank"), ("model", "key"), ("KL", "kl"), ("± SE", "se"),
                           ("log scale", "ruler")):
            nearest.add_column(label, key=key)
        related = self.query_one("#related", DataTable)
        for label, key in (("relation", "relation"), ("model", "key"), ("KL", "kl"),
                           ("± SE", "se"), ("log scale", "ruler")):
            related.add_column(label, key=key)
        nearest.focus()
        self.load()

    def load(self) -> None:
        self.start("detail", partial(Atlas.model_detail, key=self.key, textset=self.textset))

    # results -------------------------------------------------------------------------------------
    def loaded_detail(self, detail: Detail) -> None:
        self.detail = detail
        self.key, self.textset = detail.key, detail.textset
        self.query_one("#title", Static).update(escape(detail.key))
        self.query_one("#provenance", Static).update(self._provenance(detail))
        kls = [*detail.nearest["kl"].to_list(), *(r.kl for r in detail.related)]
        scale = LogScale.around(kls, RULER_WIDTH)
        on_set = f" on {detail.textset}" if detail.textset else ""
        self.query_one("#nearest-heading", Static).update(
            f"Nearest models{on_set} (KL bits/byte; ruler {scale.range_label()})")
        nearest = self.query_one("#nearest", DataTable)
        nearest.clear()
        for column in OPTIONAL:  # shown once some row has a value
            if column in detail.nearest.columns and detail.nearest[column].null_count() < (
                    detail.nearest.height) and column not in nearest.columns:
                nearest.add_column(OPTIONAL[column], key=column)
        for rank, row in enumerate(detail.nearest.iter_rows(named=True), start=1):
            cells = [str(rank), row["key"], number(row["kl"]), number(row["se"], 2),
                     scale.bar(row["kl"], "cyan")]
            cells += [_optional(column.value, row.get(column.value))  # in the table's order:
                      for column in nearest.columns if column.value in OPTIONAL]  # as added
            nearest.add_row(*cells, key=row["key"])
        related = self.query_one("#related", DataTable)
        related.clear()
        for item in detail.related:
            kl = number(item.kl) if item.error is None else Text("n/a", style="dim")
            related.add_row(item.relation, item.key, kl, number(item.se, 2),
                            scale.bar(item.kl, "magenta"), key=f"{item.relation}\t{item.key}")
        if not detail.related:
            self.query_one("#related-heading", Static).update(
                "Related variants: none stored (no parent, checkpoints, seeds or sizes)")
        else:
            self.query_one("#related-heading", Static).update("Related variants")
        missing = [item.key for item in detail.related
                   if item.error and "no text set holds" in item.error]
        errors = [f"{item.key}: {item.error}" for item in detail.related
                  if item.error and item.key not in missing]
        if missing:
            errors.insert(0, f"n/a: no vector on {detail.textset} for {', '.join(missing)}")
        if errors:
            self.notice().show("\n".join(errors), "hint")
        else:
            self.notice().clear()

    def failed_detail(self, error: str) -> None:
        self.query_one("#provenance", Static).update("")
        self.notice().show(error)

    @staticmethod
    def _provenance(detail: Detail) -> str:
        info = detail.info
        fields = [("family", info.get("family")), ("size", info.get("size")),
                  ("seed", info.get("seed")), ("quant", info.get("quant")),
                  ("layer", info.get("layer")), ("checkpoint", info.get("checkpoint"))]
        parts = [f"{name} [b]{escape(str(value))}[/b]" for name, value in fields
                 if value is not None]
        lines = ["  ".join(parts)]
        source = [("source", info.get("source")), ("revision", info.get("revision")),
                  ("parent", info.get("parent")),
                  ("params", params(info.get("n_params")) or None)]
        lines.append("  ".join(f"{name} [b]{escape(str(value))}[/b]"
                               for name, value in source if value is not None)
                     or "source unknown (imported vectors)")
        sets = ", ".join(f"{s['name']} (N={s['n_texts']}, B̄={s['mean_bytes']:.1f})"
                         for s in detail.textsets)
        lines.append(f"text sets {escape(sets) or 'none'}")
        lines.extend(DetailScreen._metrics(detail))
        return "\n".join(lines)

    @staticmethod
    def _metrics(detail: Detail) -> list[str]:
        """Its metrics (benchmark scores …) and what `atlas predict` predicted for it."""
        lines = []
        if detail.metrics.height:
            lines.append("metrics " + "  ".join(
                f"{escape(m)} [b]{v:.4g}[/b]" for m, v in
                detail.metrics.select("metric", "value").iter_rows()))
        if detail.predictions.height:
            lines.append("predicted " + "  ".join(
                f"{escape(m)} [b]{p:.4g}[/b]{' (out of fold)' if oof else ''}" for m, p, oof in
                detail.predictions.select("metric", "predicted", "out_of_fold").iter_rows()))
        return lines

    # actions ------------------------------------------------------------------------------------
    @on(DataTable.RowSelected)
    def _open(self, event: DataTable.RowSelected) -> None:
        value = event.row_key.value
        if value:
            self.app.open_model(value.split("\t")[-1])  # type: ignore[attr-defined]

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_next_textset(self) -> None:
        if self.detail is None or len(self.detail.textsets) < 2:
            self.notify("This model has vectors on one text set only.")
            return
        names = [s["name"] for s in self.detail.textsets]
        self.textset = names[(names.index(self.detail.textset) + 1) % len(names)]
        self.load()

    def action_show_run(self, mode: str) -> None:
        info = self.detail.info if self.detail else None
        if not info or info.get("step") is None:
            self.notify("This model is not a checkpoint of a training run.", severity="warning")
            return
        self.app.show_run(info["family"], info["size"], info["seed"], mode)  # type: ignore
