"""Optional dependencies (``pip install "mitsuke[langchain]"``): import them or say how to get them."""
from __future__ import annotations

import importlib
from types import ModuleType

from mitsuke.indexer.errors import MitsukeError

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(MitsukeError, ImportError):
    """An optional integration was used without its extra installed.

    An ``ImportError`` too, so ``except ImportError`` around an optional
    import keeps working.
    """


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise ``MissingExtraError`` naming the pip command that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{what} needs the {module!r} package, which is not installed ({exc}); "
            f'install it with: pip install "mitsuke[{extra}]"'
        ) from exc
