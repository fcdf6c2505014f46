"""The experiment framework: typed configs, claims built from their thresholds, the experiment record.

Every experiment is one module with the same visible shape::

    @dataclass(frozen=True)
    class Config:                       # defaults = the source's setup; thresholds live here too
        steps: int = param(3000, "Adam steps")
        agree_within: float = param(0.10, "the two absorb modes' step counts may differ by this fraction")

    QUICK = Config(steps=400)           # the --quick variant, a typed value
    def run(config, progress) -> list[dict]: ...           # polaropt's public API only
    def claims(records, config) -> list[Claim]: ...        # records -> judged claims
    def figures(records, config, out_dir) -> list[str]: ...  # records -> PNG + SVG files
    EXPERIMENT = Experiment(name=..., description=..., sources=..., config=Config, quick=QUICK,
                            run=run, claims=claims, figures=figures, notes=Path(__file__).with_suffix(".md"))

and its notes (departures from the source, interpretations) in the Markdown file next to it, formatted
with ``{config.FIELD}``. Claims, figures and notes are built from records and the config alone, so
``polaropt report DIR`` rebuilds them from the files on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

RECORD_KINDS = ("curve", "point", "trajectory", "scalar")


def param(default, help: str):
    """A config field with a one-line meaning (shown by ``polaropt run NAME --help`` and in the report)."""
    return field(default=default, metadata={"help": help})


# ---- claims ----------------------------------------------------------------------------------------

def fmt(x) -> str:
    """A measured number in words: ``None`` (a step count never reached) is "never"."""
    if x is None:
        return "never"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.3g}"
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(fmt(v) for v in x) + ")"
    return str(x)


def limit(x) -> str:
    """A threshold in words, with every digit it has (a limit is exact; ``fmt`` rounds measurements)."""
    return f"{x:g}" if isinstance(x, float) else fmt(x)


def _finite_or_never(x) -> float:
    return math.inf if x is None else float(x)


_lim = limit


@dataclass(frozen=True, kw_only=True)
class Check:
    """One comparison of a measured value with a threshold, with both sides in words.

    Built by the constructors below, which write ``expected`` from the threshold they test, so the
    text and the test cannot drift apart. A step count of ``None`` means "never" and compares as ∞.
    """

    expected: str
    measured: str
    passed: bool

    @classmethod
    def at_most(cls, what: str, value, limit) -> Check:
        return cls(expected=f"{what} ≤ {_lim(limit)}", measured=f"{what} = {fmt(value)}",
                   passed=value is not None and _finite_or_never(value) <= limit)

    @classmethod
    def at_least(cls, what: str, value, limit) -> Check:
        return cls(expected=f"{what} ≥ {_lim(limit)}", measured=f"{what} = {fmt(value)}",
                   passed=value is not None and _finite_or_never(value) >= limit)

    @classmethod
    def below(cls, what: str, value, limit) -> Check:
        """``value < limit`` (strict); ``None`` (never) is never below anything."""
        return cls(expected=f"{what} < {_lim(limit)}", measured=f"{what} = {fmt(value)}",
                   passed=value is not None and _finite_or_never(value) < limit)

    @classmethod
    def above(cls, what: str, value, limit) -> Check:
        return cls(expected=f"{what} > {_lim(limit)}", measured=f"{what} = {fmt(value)}",
                   passed=value is not None and _finite_or_never(value) > limit)

    @classmethod
    def between(cls, what: str, value, low, high) -> Check:
        return cls(expected=f"{_lim(low)} ≤ {what} ≤ {_lim(high)}", measured=f"{what} = {fmt(value)}",
                   passed=value is not None and low <= _finite_or_never(value) <= high)

    @classmethod
    def near(cls, what: str, value, target, *, rel: float | None = None, tol: float | None = None) -> Check:
        """``|value − target| ≤ rel·|target|`` (``rel``) or ``≤ tol`` (``tol``): give exactly one."""
        if (rel is None) == (tol is None):
            raise ValueError("Check.near takes exactly one of rel= or tol=")
        if rel is not None:
            expected, tol = f"{what} within ±{100 * rel:g}% of {_lim(target)}", rel * abs(target)
        else:
            expected = f"{what} within {_lim(target)} ± {_lim(tol)}"
        ok = value is not None and abs(_finite_or_never(value) - target) <= tol
        off = "" if value is None or target == 0 else f" ({100 * (_finite_or_never(value) / target - 1):+.1f}%)"
        return cls(expected=expected, measured=f"{what} = {fmt(value)}{off}", passed=ok)

    @classmethod
    def sooner(cls, what_a: str, a, what_b: str, b, *, factor: float = 1.0) -> Check:
        """Step count ``a`` at least ``factor`` times sooner than ``b`` (``None`` = never = ∞; never is
        not sooner than never)."""
        expected = f"{what_a} < {what_b}" if factor == 1 else f"{what_a} ≤ {what_b}/{factor:g} (at least {factor:g}× sooner)"
        ok = a is not None and (b is None or (a < b if factor == 1 else a * factor <= b))
        return cls(expected=expected, measured=f"{what_a} {fmt(a)}, {what_b} {fmt(b)}", passed=ok)

    @classmethod
    def less(cls, what_a: str, a, what_b: str, b, *, margin: float = 0.0) -> Check:
        """``a < b`` for two measured values; with a margin > 0, ``a + margin ≤ b`` (a clear gap)."""
        expected = f"{what_a} < {what_b}" if margin == 0 else f"{what_a} + {_lim(margin)} ≤ {what_b}"
        ok = a is not None and b is not None and (a < b if margin == 0 else a + margin <= b)
        return cls(expected=expected, measured=f"{what_a} {fmt(a)}, {what_b} {fmt(b)}", passed=ok)

    @classmethod
    def not_above(cls, what_a: str, a, what_b: str, b, *, rtol: float = 0.0, atol: float = 0.0) -> Check:
        """``a ≤ b·(1 + rtol) + atol`` for two measured values: "does not grow", up to rounding."""
        slack = "".join([f"·(1 + {_lim(rtol)})" if rtol else "", f" + {_lim(atol)}" if atol else ""])
        ok = a is not None and b is not None and a <= b * (1 + rtol) + atol
        return cls(expected=f"{what_a} ≤ {what_b}{slack}", measured=f"{what_a} {fmt(a)}, {what_b} {fmt(b)}",
                   passed=ok)

    @classmethod
    def holds(cls, expected: str, measured: str, passed: bool) -> Check:
        """A check with no number to compare (a sign, an identity, a set): the text is written by hand."""
        return cls(expected=expected, measured=measured, passed=bool(passed))


KINDS = ("source", "derived", "beyond")  # what a claim's verdict is about (see Claim)


@dataclass(frozen=True, kw_only=True)
class Claim:
    """One statement of a source turned into a measured check (keyword arguments only).

    ``kind`` says what a verdict means, and the report counts each kind apart: ``"source"``, a statement of
    a source (it can disagree with the source); ``"derived"``, a check of the project's own derivation
    (a closed form or a re-simulation worked out from the sources, a regression check that no source can
    contradict); ``"beyond"``, a finding beyond the sources (a question they do not ask).
    """

    id: str
    source: str  # seed file and section, e.g. "001 Optimization 1, Experiment: Observations"
    statement: str  # what the source says (quoted or paraphrased)
    expected: str  # the threshold, in words (written by the checks)
    measured: str  # what the records give, in words and numbers
    passed: bool
    values: dict = field(default_factory=dict)  # the numbers behind `measured`
    kind: str = "source"  # one of KINDS

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"claim {self.id!r}: kind must be one of {', '.join(map(repr, KINDS))}, got {self.kind!r}")

    @classmethod
    def of(cls, *, id: str, source: str, statement: str, checks: Check | Sequence[Check], require: str = "all",
           values: dict | None = None, kind: str = "source") -> Claim:
        """A claim judged by ``checks``: all of them must pass (``require="all"``) or one (``"any"``)."""
        checks = [checks] if isinstance(checks, Check) else list(checks)
        if not checks:
            raise ValueError(f"claim {id!r} has no checks")
        if require not in ("all", "any"):
            raise ValueError(f"require must be 'all' or 'any', got {require!r}")
        joiner = "; and " if require == "all" else "; or "
        judge = all if require == "all" else any
        # with several checks, the failing ones are marked, so a reader sees which condition broke
        several = len(checks) > 1
        return cls(id=id, source=source, statement=statement, expected=joiner.join(c.expected for c in checks),
                   measured="; ".join(c.measured + (" ✗" if several and not c.passed else "") for c in checks), passed=judge(c.passed for c in checks),
                   values=values or {}, kind=kind)

    @classmethod
    def failed(cls, *, id: str, source: str, statement: str, expected: str, why: str, kind: str = "source") -> Claim:
        """A claim the records cannot support at all (e.g. a point never reached the target)."""
        return cls(id=id, source=source, statement=statement, expected=expected, measured=why, passed=False, kind=kind)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["passed"] = bool(d["passed"])
        return d


# ---- experiments -----------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Experiment:
    name: str
    description: str  # one line, for `polaropt list` and the index
    sources: tuple[str, ...]  # seed files
    config: type  # a frozen dataclass; its defaults are the source's setup
    quick: Any  # a Config instance: reduced settings for tests and --quick
    run: Callable[[Any, Callable], list[dict]]  # (config, progress) -> records
    claims: Callable[[list[dict], Any], list[Claim]]  # (records, config) -> claims
    figures: Callable[[list[dict], Any, Path], list[str]]  # (records, config, out_dir) -> file names
    notes: Path  # Markdown, formatted with {config.FIELD}
    details: Callable[[list[dict], Any], str] | None = None  # records -> extra Markdown for the notes
    key_figure: str | None = None  # the PNG the index shows first (default: the first one)
    folder: str | None = None  # where its run goes under the output folder (default: its name)

    @property
    def path(self) -> str:
        """The run folder, relative to the output folder (``NAME``, or e.g. ``bench/TASK``)."""
        return self.folder or self.name

    def __post_init__(self):
        if not isinstance(self.quick, self.config):
            raise TypeError(f"{self.name}: quick must be a {self.config.__name__}, got {type(self.quick).__name__}")

    def make_config(self, *, quick: bool = False, overrides: dict[str, str] | None = None):
        return apply_overrides(self.quick if quick else self.config(), overrides or {}, label=self.name)

    def notes_text(self, records: list[dict], config) -> str:
        text = self.notes.read_text().format(config=config).strip()
        if self.details is not None:
            text += "\n\n" + self.details(records, config).strip()
        return text

    def code_hash(self) -> str:
        """A hash of all the code the experiment's results depend on: the core library, the suite's
        framework (``experiments/*.py``) and its own source package (modules and notes); another
        source's package does not count. ``--resume`` reruns the experiment when it changes."""
        own = Path(inspect.getsourcefile(sys.modules[self.run.__module__])).parent
        suite = Path(__file__).parent
        files = sorted([*suite.parent.glob("*.py"), *suite.glob("*.py"), *own.glob("*.py"), *own.glob("*.md")])
        h = hashlib.sha256()
        for f in files:
            h.update(str(f.relative_to(suite.parent)).encode() + b"\0" + f.read_bytes())
        return h.hexdigest()[:16]


def field_help(config_cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, meaning) of every config field, for ``--help`` and the report."""
    hints = typing.get_type_hints(config_cls)
    rows = []
    for f in dataclasses.fields(config_cls):
        tp = hints[f.name]
        name = getattr(tp, "__name__", None) if typing.get_origin(tp) is None else str(tp).replace("typing.", "")
        rows.append((f.name, name or str(tp), repr(f.default), f.metadata.get("help", "")))
    return rows


# ---- configs from the command line --------------------------------------------------------------------

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


def apply_overrides(config, overrides: dict[str, str], label: str | None = None):
    """A copy of ``config`` with ``{key: text}`` parsed by the fields' types; unknown keys refused."""
    hints = typing.get_type_hints(type(config))
    names = [f.name for f in dataclasses.fields(config)]
    changes = {}
    for key, text in overrides.items():
        if key not in names:
            raise ValueError(f"unknown config key {key!r} for {label or type(config).__name__}; valid keys are "
                             f"{', '.join(names)}")
        changes[key] = _parse_value(key, text, hints[key])
    new = dataclasses.replace(config, **changes)
    check = getattr(new, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as e:
            given = ", ".join(f"{k}={v}" for k, v in overrides.items())
            raise ValueError(f"{e}{f' (you set {given})' if given else ''}") from None
    return new


def _from_json(key: str, value, tp):
    """``value`` as read from JSON, checked against the field's type (lists back to tuples)."""
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config.json: {key}={value!r} should be a list")
        inner = (typing.get_args(tp) or (str,))[0]
        items = [_from_json(key, v, inner) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (bool, int, str) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ValueError(f"config.json: {key}={value!r} should be {getattr(tp, '__name__', tp)}")


def config_from_dict(config_cls: type, data: dict):
    """The config a run folder's ``config.json`` holds: every field present, each of its type, validated."""
    hints = typing.get_type_hints(config_cls)
    names = [f.name for f in dataclasses.fields(config_cls)]
    unknown, missing = sorted(set(data) - set(names)), [n for n in names if n not in data]
    if unknown or missing:
        parts = [f"unknown keys {unknown}"] * bool(unknown) + [f"missing keys {missing}"] * bool(missing)
        raise ValueError(f"config.json does not match {config_cls.__name__}: {', '.join(parts)}; valid keys are "
                         f"{', '.join(sorted(names))} (a run made by an older polaropt whose config lacks a field "
                         "added since: run it again)")
    config = config_cls(**{k: _from_json(k, data[k], hints[k]) for k in names})
    check = getattr(config, "validate", None)
    if check is not None:
        check()
    return config


def parse_set(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def require_distinct(**lists) -> None:
    """Refuse a sweep that names one value twice (its records would share a key): a clear ValueError
    at ``--set`` time rather than a lookup error after the whole run."""
    for name, values in lists.items():
        repeated = sorted({v for v in values if list(values).count(v) > 1})
        if repeated:
            raise ValueError(f"{name} repeats {', '.join(map(str, repeated))}: give each value once, got {tuple(values)}")


def at_source_setup(config, *names: str) -> bool:
    """True when the fields ``names`` hold their defaults (the source's setup): claims that compare with
    numbers the source printed only apply there."""
    default = type(config)()
    return all(getattr(config, n) == getattr(default, n) for n in names)


# ---- helpers that claims share -----------------------------------------------------------------

def first_below(values, threshold: float) -> int | None:
    """Index of the first value below ``threshold`` (None if never)."""
    for i, v in enumerate(values):
        if v < threshold:
            return i
    return None
