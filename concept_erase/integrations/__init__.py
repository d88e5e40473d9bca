"""concept-erase inside other tools, each through that tool's own plugin mechanism.

- :mod:`.eval_unlearn`: a technique (``concept_erase``) and an offline metric on the shapes world
  (``concept_erase_world``) for the eval-unlearn benchmark harness, registered through its
  ``eval_unlearn.techniques`` / ``eval_unlearn.metrics`` entry points
  (``pip install "concept-erase[eval-unlearn]"``).

Nothing here is imported by ``import concept_erase``; the host tool loads a module when it asks for it,
and no module imports its host tool at import time, so they load whether or not it is installed.
"""
