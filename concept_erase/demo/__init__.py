"""The side-by-side demo: original vs unlearned, same prompt and seed (:mod:`.core`), and its
Gradio app (:mod:`.ui`; Gradio itself is imported only when the app is built)."""

from .core import (
    MAX_SEEDS, MAX_UPLOAD_MB, MAX_UPLOADS, AdapterEntry, Pair, UploadLimits, UploadRefused, UploadStore,
    activate_adapters_, classify, describe_adapters, discover_adapters, example_prompts, generate_pair, generate_pairs,
    validate_upload,
)
from .ui import WORLD_EXAMPLES, build_demo, launch

__all__ = [
    "AdapterEntry", "Pair", "discover_adapters", "validate_upload", "generate_pairs", "generate_pair",
    "describe_adapters", "example_prompts", "classify", "activate_adapters_", "build_demo", "launch",
    "UploadLimits", "UploadStore", "UploadRefused", "MAX_UPLOAD_MB", "MAX_SEEDS", "MAX_UPLOADS", "WORLD_EXAMPLES",
]
