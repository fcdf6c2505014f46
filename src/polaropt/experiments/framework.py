"""The experiment framework: typed configs, claims, and the registry.

An experiment is a typed config dataclass (defaults = the source's setup), a ``run`` that uses
only polaropt's public API and returns records, ``figures`` built only from records, and
``claims`` computed only from records. Records are plain dicts (JSON-serializable) with a
``"kind"`` key; :mod:`polaropt.experiments.records` writes them.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

RECORD_KINDS = ("curve", "point", "trajectory", "scalar")


@dataclass
class Claim:
    """One statement of a source turned into a measured check."""

    id: str
    source: str  # seed file and section, e.g. "001 Optimization 1, Experiment: Observations"
    statement: str  # what the source says (quoted or paraphrased)
    expected: str  # the threshold, in words
    measured: str  # what the records give, in words and numbers
    passed: bool
    values: dict = field(default_factory=dict)  # the numbers behind `measured`

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["passed"] = bool(d["passed"])
        return d


@dataclass
class Experiment:
    name: str
    description: str  # one line, for `polaropt list`
    sources: tuple[str, ...]  # seed files
    config_cls: type
    run: Callable[[Any, Callable], list[dict]]  # (config, progress) -> records
    claims: Callable[[list[dict], Any], list[Claim]]  # (records, config) -> claims
    figures: Callable[[list[dict], Any, Any], list[str]]  # (records, config, out_dir) -> file names
    notes: Callable[[list[dict], Any], str]  # (records, config) -> markdown: departures, explanations
    quick: dict = field(default_factory=dict)  # config overrides for --quick


EXPERIMENTS: dict[str, Experiment] = {}


def register(exp: Experiment) -> Experiment:
    if exp.name in EXPERIMENTS:
        raise ValueError(f"experiment {exp.name!r} registered twice")
    EXPERIMENTS[exp.name] = exp
    return exp


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; valid choices are {', '.join(sorted(EXPERIMENTS))}")
    return EXPERIMENTS[name]


# ---- configs -----------------------------------------------------------------------------------

def _parse_value(key: str, text: str, tp) -> Any:
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        args = typing.get_args(tp)
        inner = args[0] if args else str
        items = [t for t in text.split(",") if t.strip() != ""]
        if not items:
            raise ValueError(f"--set {key}=: give a comma-separated list of {getattr(inner, '__name__', inner)}")
        values = [_parse_value(key, t.strip(), inner) for t in items]
        return tuple(values) if origin is tuple else values
    if tp is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {key}={text}: expected a bool (true/false)")
    if tp in (int, float):
        try:
            value = tp(text)
        except ValueError:
            raise ValueError(f"--set {key}={text}: expected {tp.__name__}") from None
        if tp is float and not math.isfinite(value):
            raise ValueError(f"--set {key}={text}: expected a finite float")
        return value
    if tp is str:
        return text
    raise ValueError(f"--set {key}: cannot parse values of type {tp}")


def apply_overrides(config, overrides: dict[str, str]):
    """A copy of ``config`` with ``{key: text}`` parsed by the fields' types; unknown keys refused."""
    hints = typing.get_type_hints(type(config))
    names = [f.name for f in dataclasses.fields(config)]
    changes = {}
    for key, text in overrides.items():
        if key not in names:
            raise ValueError(f"unknown config key {key!r} for {type(config).__name__}; valid keys are {', '.join(names)}")
        changes[key] = _parse_value(key, text, hints[key])
    new = dataclasses.replace(config, **changes)
    check = getattr(new, "validate", None)
    if check is not None:
        check()
    return new


def parse_set(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def make_config(exp: Experiment, *, quick: bool = False, seeds: int | None = None,
                overrides: dict[str, str] | None = None):
    config = exp.config_cls()
    if quick and exp.quick:
        config = dataclasses.replace(config, **exp.quick)
    if seeds is not None:
        if "seeds" not in [f.name for f in dataclasses.fields(config)]:
            raise ValueError(f"experiment {exp.name!r} is deterministic: --seeds does not apply")
        if seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {seeds}")
        config = dataclasses.replace(config, seeds=seeds)
    return apply_overrides(config, overrides or {})


# ---- helpers that claims share -----------------------------------------------------------------

def first_below(values, threshold: float) -> int | None:
    """Index of the first value below ``threshold`` (None if never)."""
    for i, v in enumerate(values):
        if v < threshold:
            return i
    return None


def fmt_steps(n) -> str:
    return "never" if n is None else str(n)
