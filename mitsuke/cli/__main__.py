"""``python -m mitsuke.cli``: the ``mitsuke`` command."""
from __future__ import annotations

from mitsuke.cli import main

if __name__ == "__main__":
    main()
