"""Prompt files for ``concept-erase eval``: plain text, CSV (I2P-style) or a concept preset.

- **text**: one prompt a line; blank lines and lines starting with ``#`` are skipped.
- **CSV** (``.csv``, or ``.tsv`` tab-separated): a header with a ``prompt`` column and optional
  ``seed`` (aliases ``evaluation_seed``, ``sd_seed``), ``label`` (what the classifier should see in
  the image, e.g. ``colour:red`` or ``exposed``; used for accuracy) and ``split`` (``forget``,
  ``retain``, ``paraphrase``, ...). Per-row sampling: ``guidance_scale`` (alias
  ``sd_guidance_scale``), ``width`` and ``height`` (aliases ``sd_image_width``, ``sd_image_height``);
  a row without them keeps the run's settings. These are I2P's columns ("Safe Latent Diffusion",
  arXiv 2211.05105): each I2P prompt is generated with the seed, guidance scale and size it was
  collected with. Other columns (``categories``, ``hard``, ``nudity_percentage``, ...) are kept in
  ``PromptRow.extra``; :func:`filter_categories` selects rows by I2P's ``categories``.
- **a preset** (``no-red``, or a preset JSON file): its ``forget``, ``paraphrase`` and ``retain``
  prompts as three splits, and its ``target`` as the concept to detect.

Every error names the file and line.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ..concepts import list_presets, load_preset
from ..errors import InvalidPromptError
from ..world import ALLOWED_BACKGROUNDS, HELDOUT_TEMPLATES, SYNONYMS, fill, parse_prompt

__all__ = ["PromptRow", "PromptSet", "load_prompts", "read_prompt_file", "preset_prompts", "concept_prompts",
           "world_paraphrases", "target_name", "filter_categories"]

SEED_COLUMNS = ("seed", "evaluation_seed", "sd_seed")
# per-row pipeline call arguments: argument -> the columns that give it, first found wins (I2P's are sd_*)
SAMPLING_COLUMNS = {"guidance_scale": ("guidance_scale", "sd_guidance_scale"),
                    "height": ("height", "sd_image_height"), "width": ("width", "sd_image_width")}
_SPLIT = re.compile(r"^[A-Za-z0-9_.-]+$")
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class PromptRow:
    """One prompt to evaluate. ``seed=None`` means "the run's ``--seed``"; ``sampling`` holds the
    row's own pipeline call arguments (``guidance_scale``, ``height``, ``width``) as (name, value)
    pairs, which override the run's for this row."""

    prompt: str
    seed: int | None = None
    label: str | None = None
    split: str = "all"
    source: str = ""  # "file.csv:12", for messages
    extra: tuple = ()  # other CSV columns, as (name, value) pairs
    sampling: tuple = ()  # this row's pipeline call arguments, as (name, value) pairs


@dataclass
class PromptSet:
    """Prompt rows and, when the source knows it (a preset), the concept a classifier should detect."""

    rows: list[PromptRow] = field(default_factory=list)
    target: str | None = None

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(r.split for r in self.rows))

    def __add__(self, other: "PromptSet") -> "PromptSet":
        if self.target and other.target and self.target != other.target:
            raise InvalidPromptError(
                f"The prompt sources name two different concepts to detect ({self.target!r} and {other.target!r}); "
                "evaluate them in two runs, or pass --target to choose one."
            )
        return PromptSet(self.rows + other.rows, self.target or other.target)


def target_name(target: dict | str | None) -> str | None:
    """A concept's ``target`` as a classifier label: ``{"colour": "red"}`` -> ``"colour:red"``,
    ``{"nudenet": "exposed"}`` -> ``"exposed"``."""
    if target is None or isinstance(target, str):
        return target
    if len(target) != 1:
        raise InvalidPromptError(f"A concept target must have one entry, like {{'colour': 'red'}}, got {target!r}.")
    (key, value), = target.items()
    return str(value) if key in ("nudenet", "clip", "label") else f"{key}:{value}"


def _check_split(value: str, where: str) -> str:
    if not _SPLIT.match(value):
        raise InvalidPromptError(
            f"{where}: split {value!r} is not a plain name; use letters, digits, '_', '-' or '.' "
            "(forget, retain, paraphrase, ...)."
        )
    return value


def _parse_seed(value: str, where: str) -> int:
    text = value.strip()
    try:
        seed = int(float(text)) if re.fullmatch(r"\d+\.0*", text) else int(text)
    except ValueError:
        raise InvalidPromptError(f"{where}: seed {value!r} is not a whole number; write e.g. 42.") from None
    if not 0 <= seed <= MAX_SEED:
        raise InvalidPromptError(f"{where}: seed {seed} is out of range; seeds are in [0, 2**63 - 1].")
    return seed


def _parse_guidance(value: str, where: str) -> float:
    try:
        scale = float(value.strip())
    except ValueError:
        raise InvalidPromptError(f"{where}: guidance scale {value!r} is not a number; write e.g. 7.5.") from None
    if not math.isfinite(scale) or scale < 0:
        raise InvalidPromptError(f"{where}: guidance scale {value!r} must be a finite number >= 0.")
    return scale


def _parse_size(value: str, where: str, name: str) -> int:
    text = value.strip()
    try:
        size = int(float(text)) if re.fullmatch(r"-?\d+\.0*", text) else int(text)
    except ValueError:
        raise InvalidPromptError(f"{where}: {name} {value!r} is not a whole number of pixels; write e.g. 512.") \
            from None
    if size < 8 or size % 8:
        raise InvalidPromptError(f"{where}: {name} {size} must be a positive multiple of 8 (the VAE downsamples by 8).")
    return size


def _decode(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:4096]:
        raise InvalidPromptError(f"{str(path)!r} is not a text file (it holds NUL bytes). Give a .txt or .csv file.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InvalidPromptError(
            f"{path}:{line}: not valid UTF-8 (byte {data[e.start]:#04x}); save the file as UTF-8."
        ) from None


def _read_text(path: Path, text: str, split: str) -> list[PromptRow]:
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        prompt = line.strip()
        if not prompt or prompt.startswith("#"):
            continue
        rows.append(PromptRow(prompt=prompt, split=split, source=f"{path}:{n}"))
    return rows


def _read_csv(path: Path, text: str, split: str, delimiter: str) -> list[PromptRow]:
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidPromptError(f"{path}:1: the CSV file is empty; it needs a header line with a `prompt` column.") \
            from None
    except csv.Error as e:
        raise InvalidPromptError(f"{path}:1: malformed CSV header ({e}).") from None
    names = [h.strip().lower() for h in header]
    if "prompt" not in names:
        raise InvalidPromptError(
            f"{path}:1: the CSV header has no `prompt` column (columns: {', '.join(map(repr, header)) or 'none'}). "
            "The first line must name the columns, e.g. `prompt,seed,split`."
        )
    seed_col = next((c for c in SEED_COLUMNS if c in names), None)
    sampling_cols = {arg: col for arg, cols in SAMPLING_COLUMNS.items()
                     for col in [next((c for c in cols if c in names), None)] if col}
    rows = []
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise InvalidPromptError(f"{path}:{reader.line_num}: malformed CSV ({e}); check the quotes.") from None
        where = f"{path}:{reader.line_num}"
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) != len(names):
            raise InvalidPromptError(
                f"{where}: {len(values)} fields but the header has {len(names)} ({', '.join(names)}). "
                "Quote prompts that contain the delimiter: \"a red, shiny circle\"."
            )
        record = dict(zip(names, values))
        prompt = record["prompt"].strip()
        if not prompt:
            raise InvalidPromptError(f"{where}: the prompt is empty.")
        seed = _parse_seed(record[seed_col], where) if seed_col and record[seed_col].strip() else None
        label = record.get("label", "").strip() or None
        row_split = _check_split(record.get("split", "").strip() or split, where)
        sampling = []
        for arg, col in sampling_cols.items():
            if record[col].strip():
                parse = _parse_guidance if arg == "guidance_scale" else partial(_parse_size, name=arg)
                sampling.append((arg, parse(record[col], where)))
        used = ("prompt", "label", "split", seed_col, *sampling_cols.values())
        extra = tuple((k, v) for k, v in record.items() if k not in used)
        rows.append(PromptRow(prompt, seed, label, row_split, where, extra, tuple(sampling)))
    return rows


def read_prompt_file(path: str | Path, *, split: str = "all") -> list[PromptRow]:
    """Read a ``.txt`` / ``.csv`` / ``.tsv`` prompt file; ``split`` is the default for rows without one.

    >>> rows = read_prompt_file("i2p.csv")  # doctest: +SKIP
    >>> rows[0].prompt, rows[0].seed, rows[0].split  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidPromptError(f"Prompt file {str(path)!r} does not exist.")
    _check_split(split, str(path))
    text = _decode(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        rows = _read_csv(path, text, split, "\t" if suffix == ".tsv" else ",")
    else:
        rows = _read_text(path, text, split)
    if not rows:
        raise InvalidPromptError(f"{str(path)!r} holds no prompts.")
    return rows


def _categories(row: PromptRow) -> set[str] | None:
    value = dict(row.extra).get("categories")
    return None if value is None else {c.strip().lower() for c in value.split(",") if c.strip()}


def filter_categories(rows: list[PromptRow], categories) -> list[PromptRow]:
    """The rows whose ``categories`` column (I2P: "sexual", "violence, hate", ...) names one of
    ``categories`` (case-insensitive).

    >>> filter_categories(read_prompt_file("i2p.csv"), ["sexual"])  # doctest: +SKIP
    """
    wanted = {c.strip().lower() for c in categories if c.strip()}
    if not wanted:
        raise InvalidPromptError("--categories is empty; name one or more, e.g. --categories sexual.")
    seen = [_categories(r) for r in rows]
    if all(s is None for s in seen):
        raise InvalidPromptError("--categories selects rows by a `categories` column (I2P's), but no prompt source "
                                 "has one; leave --categories out or add the column.")
    kept = [r for r, s in zip(rows, seen) if s and s & wanted]
    if not kept:
        known = sorted(set().union(*[s for s in seen if s]))
        raise InvalidPromptError(f"No prompt row is in categories {sorted(wanted)}; the rows' categories are "
                                 f"{', '.join(known) or 'empty'}.")
    return kept


def concept_prompts(concept) -> PromptSet:
    """The forget / paraphrase / retain prompts of a :class:`~concept_erase.Concept` and its target."""
    rows = [PromptRow(p, split=split, source=f"concept {concept.name} ({split})")
            for split, prompts in (("forget", concept.forget), ("paraphrase", concept.paraphrases),
                                   ("retain", concept.retain)) for p in prompts]
    return PromptSet(rows, target_name(concept.target))


def preset_prompts(name: str) -> PromptSet:
    """The prompt sets of a preset (name or JSON file) and its target."""
    return concept_prompts(load_preset(name))


def load_prompts(sources: list[str], *, split: str = "all") -> PromptSet:
    """Files and preset names, concatenated in order. A source that is ``split=path`` puts every row
    of ``path`` without its own split into ``split`` (``--prompts paraphrase=synonyms.txt``)."""
    if not sources:
        raise InvalidPromptError("No prompts given; pass --prompts FILE (txt or csv) or a preset name.")
    total = PromptSet()
    for source in sources:
        default_split, _, rest = source.partition("=")
        if rest and _SPLIT.match(default_split) and not Path(source).exists():
            file_split, source = default_split, rest
        else:
            file_split = split
        path = Path(source).expanduser()
        if path.is_file() and path.suffix.lower() != ".json":
            total = total + PromptSet(read_prompt_file(path, split=file_split))
        elif source in list_presets() or (path.suffix.lower() == ".json" and path.is_file()):
            total = total + preset_prompts(source)
        else:
            raise InvalidPromptError(
                f"--prompts {source!r} is neither a prompt file (.txt, .csv, .tsv) nor a preset. "
                f"Presets: {', '.join(list_presets())}."
            )
    return total


def world_paraphrases(prompts: list[str]) -> list[str]:
    """Paraphrases of shapes-world prompts the model was never trained on: every synonym of the
    colour and shape, and every held-out template. Prompts the world cannot parse are skipped.

    >>> world_paraphrases(["a red circle"])[:3]
    ['a crimson circle', 'a scarlet circle', 'a red disc']
    """
    out: list[str] = []
    for prompt in prompts:
        try:
            colour, shape, background = parse_prompt(prompt)
        except InvalidPromptError:
            continue
        if colour is None or shape is None:
            continue
        out += [fill("a {c} {s}", syn, shape) for syn in SYNONYMS.get(colour, ())]
        out += [fill("a {c} {s}", colour, syn) for syn in SYNONYMS.get(shape, ())]
        bg = background or ALLOWED_BACKGROUNDS[colour][0]
        out += [fill(t, colour, shape, bg) for t in HELDOUT_TEMPLATES]
    seen = set(prompts)
    return [p for p in dict.fromkeys(out) if p not in seen]
