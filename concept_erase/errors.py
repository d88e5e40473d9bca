"""The error types concept-erase raises.

Every error derives from :class:`ConceptEraseError` *and* from the built-in type a caller would
expect (``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError`` keeps working.
Messages say what was wrong, the value seen, and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "ConceptEraseError",
    "InvalidConfigError",
    "InvalidPromptError",
    "UnknownConceptError",
    "WeightsNotFoundError",
    "AdapterFormatError",
    "ArchitectureMismatchError",
    "UnsupportedArchitectureError",
    "TrainingDivergedError",
    "MissingDependencyError",
    "OutputPathError",
    "AdapterStateError",
]


class ConceptEraseError(Exception):
    """Base class of every error raised on purpose by concept-erase."""


class InvalidConfigError(ConceptEraseError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class InvalidPromptError(ConceptEraseError, ValueError):
    """A prompt, caption or prompt file cannot be used (empty, unknown word, malformed line)."""


class UnknownConceptError(ConceptEraseError, KeyError):
    """A preset or adapter name resolves to nothing."""

    def __str__(self) -> str:  # KeyError would repr() the message and show the quotes
        return str(self.args[0]) if self.args else ""


class WeightsNotFoundError(ConceptEraseError, FileNotFoundError):
    """Model weights (world model, classifier, Inception, CLIP) are not where they should be."""


class AdapterFormatError(ConceptEraseError, ValueError):
    """An adapter file is not a valid concept-erase / LoRA safetensors file."""


class ArchitectureMismatchError(ConceptEraseError, ValueError):
    """An adapter was made for a UNet of another architecture."""


class UnsupportedArchitectureError(ConceptEraseError, ValueError):
    """A method cannot train on this kind of pipeline (its UNet's conditioning, its scheduler's prediction
    type); the message names the method or setting and the reason."""


class TrainingDivergedError(ConceptEraseError, FloatingPointError):
    """The loss became NaN or infinite; nothing was written."""


class MissingDependencyError(ConceptEraseError, ModuleNotFoundError):
    """An optional dependency is not installed; the message gives the install command."""


class OutputPathError(ConceptEraseError, OSError):
    """An output path cannot be used: it exists, holds other files, is protected or is not writable.

    Raised before any work starts, so nothing is lost and nothing the user owns is touched."""

    def __str__(self) -> str:  # OSError would format (errno, strerror) pairs
        return str(self.args[0]) if self.args else ""


class AdapterStateError(ConceptEraseError, RuntimeError):
    """The pipeline's adapters were changed behind concept-erase's back (diffusers' own ``fuse_lora``,
    ``set_adapters``, ``disable_lora``, ...) in a way an unlearning call cannot undo exactly; the
    message says what happened and what to call. Nothing was changed by the refused call."""
