"""Where the models of a manifest are: local paths or hub ids, their checkpoints and parents.

The same questions have a hub answer and a local one: which checkpoints exist (the repo's
branches and tags, or the folders that match the source pattern) and what a model was fine-tuned
from (``base_model`` in the model card, or in a local folder's README front matter).
"""

from __future__ import annotations

import re
import string
from pathlib import Path

from atlas.errors import AtlasError


class SourceError(AtlasError):
    """A source pattern whose checkpoints or parent cannot be found."""


def looks_local(source: str) -> bool:
    """Paths have a leading ./ ../ / ~, a .gguf suffix or more than two parts; hub ids have
    at most ``org/name``."""
    return (source.startswith(("/", ".", "~")) or source.endswith(".gguf")
            or source.count("/") > 1)


def resolve_source(source: str, root: Path) -> str:
    """Local sources become absolute (as ``atlas ingest`` stores them, so configs match);
    relative ones are relative to the manifest's folder. Hub ids stay as they are."""
    path = Path(source).expanduser()
    path = path if path.is_absolute() else root / path
    if path.exists() or looks_local(source):
        return str(path.resolve())
    return source


def _pattern(template: str, values: dict) -> re.Pattern:
    """A regex of ``template`` with ``{step}`` captured and the other placeholders filled."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name == "step":
            parts.append(r"(?P<step>\d+)")
        elif name is not None:
            parts.append(re.escape(str(values[name])))
    return re.compile("".join(parts))


def available_steps(source: str, revision: str | None, values: dict, root: Path) -> list[int]:
    """The steps that exist: hub branches and tags matching ``revision``, or local folders
    (and files) matching ``source``; ``values`` fills the other placeholders."""
    if revision is not None and "{step}" in revision:
        repo = source.format(**values)
        names = list_revisions(repo)
        pattern = _pattern(revision, values)
    else:
        base = Path(source).expanduser()
        base = base if base.is_absolute() else root / base
        pattern = _pattern(str(base), values)
        glob = re.sub(r"\{[^}]*\}", "*", str(base))
        names = [str(p) for p in Path("/").glob(glob.lstrip("/"))]
    steps = sorted({int(m["step"]) for name in names if (m := pattern.fullmatch(name))})
    if not steps:
        raise SourceError(f"no checkpoints found for {source!r} with {values}: nothing matches "
                          f"{pattern.pattern}")
    return steps


def list_revisions(repo: str) -> list[str]:
    """Branch and tag names of a hub model repo."""
    from huggingface_hub import list_repo_refs

    try:
        refs = list_repo_refs(repo)
    except Exception as exc:  # offline, unknown repo, no access: all mean the same here
        raise SourceError(
            f"{repo}: cannot list its revisions on the hub ({type(exc).__name__}: {exc}); "
            "when offline, give the steps as a list or a schedule instead of \"available\""
        ) from None
    return [ref.name for ref in (*refs.branches, *refs.tags)]


def base_model(source: str, revision: str | None) -> str:
    """What ``source`` was fine-tuned from: the hub model card's (or a local README's front
    matter) ``base_model``."""
    if Path(source).exists():
        readme = Path(source) / "README.md" if Path(source).is_dir() else None
        found = _front_matter_base(readme.read_text(encoding="utf-8")) if (
            readme and readme.is_file()) else None
    else:
        found = _hub_base(source, revision)
    if not found:
        raise SourceError(f"{source}: its model card names no base_model; set parent = KEY")
    return found


def _hub_base(repo: str, revision: str | None) -> str | None:
    from huggingface_hub import model_info

    try:
        card = model_info(repo, revision=revision).card_data
    except Exception as exc:
        raise SourceError(f"{repo}: cannot read its model card on the hub ({exc}); set "
                          "parent = KEY") from None
    value = card.get("base_model") if card else None
    return value[0] if isinstance(value, list) and value else value


def _front_matter_base(text: str) -> str | None:
    match = re.match(r"---\n(.*?)\n---", text, re.DOTALL)
    if not match:
        return None
    found = re.search(r"^base_model:\s*(?:\n\s*-\s*)?['\"]?([^'\"\n]+)", match[1], re.MULTILINE)
    return found[1].strip() if found else None
