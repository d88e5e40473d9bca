"""The concept-erase side-by-side demo, runnable as ``python demo/app.py`` or as a Hugging Face Space.

Same as ``concept-erase demo``; the app itself lives in ``concept_erase/demo/`` (``core.py``: pairs, adapters, verdicts;
``ui.py``: the Gradio Blocks).
Environment: ``CONCEPT_ERASE_BASE`` (default ``world``), ``GRADIO_SERVER_NAME`` (default 127.0.0.1),
``GRADIO_SERVER_PORT``.

Binding all interfaces (``GRADIO_SERVER_NAME=0.0.0.0``) is for Hugging Face Spaces only, where the
platform sets it and sits in front of the app: anywhere else it exposes the demo to every machine
that can reach this one. Uploads are bounded per file, per session and for all sessions together
(``concept-erase demo --help``, "uploads"), and dropped when a session closes or goes idle.
"""

import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from concept_erase.cli import main  # noqa: E402

if __name__ == "__main__":
    argv = ["demo", "--base", os.environ.get("CONCEPT_ERASE_BASE", "world"),
            "--host", os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")]
    if os.environ.get("GRADIO_SERVER_PORT"):
        argv += ["--port", os.environ["GRADIO_SERVER_PORT"]]
    sys.exit(main(argv + sys.argv[1:]))
