"""Where cnnlab finds its Hydra configs, for a source checkout and for an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PKG_DIR = Path(__file__).resolve().parent
_REPO_CONF = _PKG_DIR.parent.parent / "conf"  # editable install / source checkout
_WHEEL_CONF = _PKG_DIR / "conf"  # `pip install .` copies conf/ here (see pyproject)

#: Absolute path of the ``conf/`` folder the entry points compose from.
CONF_DIR: str = str(_REPO_CONF if _REPO_CONF.is_dir() else _WHEEL_CONF)
