"""The reproduction suite (needs the ``experiments`` extra: ``pip install "polaropt[experiments]"``).

One module per experiment, under a package per source (``liu``, ``wu``, ``chou``, ``cs182``); the
explicit list is ``registry.EXPERIMENTS``. The framework (``framework``, ``records``, ``training``,
``runner``, ``report``, ``figures``, ``theory``) imports no experiment.
"""

import importlib.util

_MISSING = [m for m in ("numpy", "scipy", "matplotlib", "tqdm") if importlib.util.find_spec(m) is None]
if _MISSING:
    raise ImportError(f"the reproduction suite needs {', '.join(_MISSING)}, which the core library does not: "
                      "install the extra with pip install \"polaropt[experiments]\" (from a checkout: "
                      "pip install -e \".[experiments]\")")
