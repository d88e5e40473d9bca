"""What to erase: forget prompts, the anchor they should turn into, and optional retain prompts.

A :class:`Concept` is plain data. Named presets are JSON files shipped in ``concept_erase/presets/``
(``no-nudity`` for Stable Diffusion 1.x/2.x, ``no-red``, ``no-circle``, ``no-striped`` for the
shapes world); ``load_preset(name)`` reads one and ``list_presets()`` lists them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import InvalidPromptError, UnknownConceptError

__all__ = ["Concept", "load_preset", "list_presets", "resolve_concept", "PRESETS_DIR"]

PRESETS_DIR = Path(__file__).parent / "presets"


def _prompt_list(value, name: str, *, allow_empty: bool) -> list[str]:
    if isinstance(value, str):
        value = [value]
    value = list(value or [])
    bad = [v for v in value if not isinstance(v, str) or not v.strip()]
    if bad:
        raise InvalidPromptError(f"`{name}` must hold non-empty strings, but holds {bad[0]!r}.")
    if not value and not allow_empty:
        raise InvalidPromptError(f"`{name}` is empty; give at least one prompt.")
    return value


@dataclass
class Concept:
    """A concept to erase, given the way a user gives it.

    ``phrase`` names the concept in a few words ("red", "nudity", "striped background"): methods
    whose authors train on the concept's name (ESD) use it; the others use the prompts. ``forget``
    holds a few prompts that show it (the presets give at most 8). ``anchor`` is one prompt for every forget prompt, or a list aligned with ``forget``
    (``"a red circle" -> "a gray circle"``). ``paraphrases`` are prompts that name the concept in
    other words; they are never trained on and only measure how far the erasure generalises.

    >>> Concept(name="red", forget=["a red circle"], anchor=["a gray circle"])
    Concept(name='red', forget=['a red circle'], anchor=['a gray circle'], retain=[], paraphrases=[], target=None, description='', phrase=None)
    """

    name: str
    forget: list[str]
    anchor: list[str]
    retain: list[str] = field(default_factory=list)
    paraphrases: list[str] = field(default_factory=list)
    # What a classifier should detect when the concept is present, e.g. {"colour": "red"} in the
    # shapes world or {"nudenet": "exposed"}; used by evaluation, not by training.
    target: dict | None = None
    description: str = ""
    phrase: str | None = None  # the concept's name as a user types it; default: none (methods use the prompts)

    def __post_init__(self) -> None:
        self.forget = _prompt_list(self.forget, "forget", allow_empty=False)  # first: `--forget ""` is about prompts
        if not isinstance(self.name, str) or not self.name.strip():
            raise InvalidPromptError(f"A concept needs a non-empty `name`, got {self.name!r}.")
        anchor = _prompt_list(self.anchor, "anchor", allow_empty=False)
        if len(anchor) == 1:
            anchor = anchor * len(self.forget)
        if len(anchor) != len(self.forget):
            raise InvalidPromptError(
                f"`anchor` must hold 1 prompt or one per forget prompt ({len(self.forget)}), but holds {len(anchor)}."
            )
        self.anchor = anchor
        self.retain = _prompt_list(self.retain, "retain", allow_empty=True)
        self.paraphrases = _prompt_list(self.paraphrases, "paraphrases", allow_empty=True)
        if self.phrase is not None and (not isinstance(self.phrase, str) or not self.phrase.strip()):
            raise InvalidPromptError(f"`phrase` must be a non-empty string or None, but is {self.phrase!r}.")

    def phrase_prompts(self) -> list[str]:
        """``[phrase]`` when the concept has a phrase, else its forget prompts."""
        return [self.phrase] if self.phrase else list(self.forget)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Concept":
        if not isinstance(data, dict):
            raise InvalidPromptError(f"A concept is a JSON object of fields, but got a {type(data).__name__}.")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidPromptError(f"Unknown concept field(s) {unknown}; expected some of {sorted(known)}.")
        return cls(**data)


def list_presets() -> list[str]:
    """Names of the presets shipped with concept-erase."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset(name: str) -> Concept:
    """Load a shipped preset by name (``"no-red"``) or a preset JSON file by path."""
    path = Path(name)
    if not (path.suffix == ".json" and path.is_file()):
        path = PRESETS_DIR / f"{name}.json"
    if not path.is_file():
        raise UnknownConceptError(
            f"Unknown preset {name!r}. Shipped presets: {', '.join(list_presets())}. "
            "Or describe the concept yourself: --forget PROMPT ... --anchor PROMPT."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidPromptError(f"Preset file {str(path)!r} is not valid UTF-8 JSON ({type(e).__name__}: "
                                 f"{str(e)[:200]}).") from None
    return Concept.from_dict(data)


def resolve_concept(concept: "Concept | str | dict") -> Concept:
    """A :class:`Concept`, a preset name / path, or a dict -> :class:`Concept`."""
    if isinstance(concept, Concept):
        return concept
    if isinstance(concept, dict):
        return Concept.from_dict(concept)
    if isinstance(concept, str):
        return load_preset(concept)
    raise InvalidPromptError(f"Expected a Concept, a preset name or a dict, got {type(concept).__name__}.")
