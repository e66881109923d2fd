"""Progress bars: tqdm when a person is watching, silent otherwise."""

from __future__ import annotations

import os
import sys
from typing import Any


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def progress_enabled(enabled: bool | None = None) -> bool:
    """Whether to show a bar: ``enabled`` if given, else only on a TTY and not under ``WDECOMP_NO_PROGRESS``."""
    if enabled is not None:
        return bool(enabled)
    if os.environ.get("WDECOMP_NO_PROGRESS"):
        return False
    return sys.stderr.isatty()


def progress_bar(total: int | None = None, desc: str = "", enabled: bool | None = None, **kw: Any) -> Any:
    """A ``tqdm`` bar, or a no-op with the same methods when progress is off."""
    if not progress_enabled(enabled) or (total is not None and total <= 1):
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, **kw)
