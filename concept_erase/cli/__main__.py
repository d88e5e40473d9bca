"""``python -m concept_erase.cli`` (also what ``accelerate launch -m concept_erase.cli eval ...`` runs)."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
