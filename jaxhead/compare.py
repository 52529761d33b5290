"""Compare stylization methods on the same footing: train each on the same identities for the
same budget, then evaluate them all in one Table-1-style report.

    python -m jaxhead.compare --config configs/compare.py [--config.steps=500]
    python -m jaxhead.compare --config configs/compare_demo.py --config.only=ld,sds   # CPU

``config.methods`` maps a method name to overrides of the training config ``config.train``
(``"objective=sds; batch_size=2; terms.relative_distance.weight=1.0"``; values are Python
literals, anything else a string; ``""`` = the training config as it is). Each method trains
``config.steps`` steps in ``<workdir>/<name>/`` (``jaxhead.train``'s workdir: checkpoints,
metrics, previews, ``generator/``); then ``jaxhead.evaluate`` scores the frozen generator and
every trained one on ``config.eval``'s identities and views, into ``<workdir>/report/``
(``report.md``, ``metrics.json``, ``metrics.png``, ``sheets/``, ``cache/``), one row per
method. ``<workdir>/compare.json`` records each method's overrides, status and time.

A method whose run finished (``<name>/compare_done.json`` with the same config) is reused; an
interrupted one resumes from its last checkpoint; a method that fails is reported (stderr,
``compare.json``, the report) and the others still run; the command then exits 1.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxhead.errors import DataError, JaxheadError, MissingWeightsError, UsageError

REFERENCE = "frozen"  # the report's row of the unedited generator
REPORT_DIR = "report"  # <workdir>/report: the evaluation's workdir
DONE_FILE = "compare_done.json"
SUMMARY_FILE = "compare.json"
# training fields a method may not change: the budget, the identities, the frozen generator
FIXED_FIELDS = ("steps", "workdir", "seed", "models.generator")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")

TrainFn = Callable[[Any, Path], Path]  # (training config, workdir) -> generator directory


# --- the method list ------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A Python literal (``1``, ``0.5``, ``True``, ``(0.5, 0.98)``, ``'x'``), else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_overrides(spec: str, where: str = "overrides") -> dict[str, Any]:
    """``"a=1; b.c=(0.5, 0.98); objective=sds"`` -> ``{"a": 1, "b.c": (0.5, 0.98),
    "objective": "sds"}`` (``;``-separated ``field=value``; ``""`` -> ``{}``)."""
    out: dict[str, Any] = {}
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"{where}: expected FIELD=VALUE pairs separated by ';', got "
                             f"{part!r}")
        if key in out:
            raise UsageError(f"{where}: field {key!r} given twice")
        out[key] = parse_value(value.strip())
    return out


def parse_methods(methods: Mapping[str, str], only: str = "") -> dict[str, dict[str, Any]]:
    """``config.methods`` -> ``{name: overrides}`` in the order written, restricted to the
    comma-separated names in ``only`` (in ``only``'s order) when given. Refuses bad names,
    fixed fields and unknown objectives (naming the registered ones)."""
    from jaxhead import losses
    from jaxhead.training.config import NO_OBJECTIVE

    out: dict[str, dict[str, Any]] = {}
    # a ConfigDict lists its keys sorted; its field table keeps the order they were written
    names = list(getattr(methods, "_fields", None) or methods)
    for name in names:
        spec = methods[name]
        if not _NAME.match(name) or name in (REFERENCE, REPORT_DIR):
            raise UsageError(f"methods.{name}: a method name is a letter then letters, digits, "
                             f"'_' or '-', and not {REFERENCE!r} or {REPORT_DIR!r}")
        if not isinstance(spec, str):
            raise UsageError(f"methods.{name}: expected a string of FIELD=VALUE overrides "
                             f"separated by ';', got {type(spec).__name__}")
        ov = parse_overrides(spec, f"methods.{name}")
        fixed = [k for k in ov if k in FIXED_FIELDS]
        if fixed:
            raise UsageError(f"methods.{name}: {fixed} are the same for every method (the "
                             "budget is config.steps; the identities, seed and frozen "
                             "generator come from config.train)")
        obj = ov.get("objective")
        if obj is not None and obj not in losses.OBJECTIVES and obj != NO_OBJECTIVE:
            raise UsageError(f"methods.{name}: unknown objective {obj!r} (registered: "
                             f"{', '.join(sorted(losses.OBJECTIVES))}, or {NO_OBJECTIVE!r})")
        out[name] = ov
    if not out:
        raise UsageError("methods is empty: nothing to compare")
    if only:
        names = [n.strip() for n in only.split(",") if n.strip()]
        if not names:
            raise UsageError(f"only={only!r} names no method (comma-separated names of "
                             f"{list(out)}, or empty for all)")
        bad = [n for n in names if n not in out]
        if bad:
            raise UsageError(f"only: {bad} not among the methods {list(out)}")
        out = {n: out[n] for n in dict.fromkeys(names)}
    return out


def method_config(train: Any, name: str, overrides: Mapping[str, Any], steps: int,
                  workdir: Path) -> Any:
    """A copy of the training config ``train`` with the method's overrides, ``steps`` and
    ``workdir`` set, validated (:func:`jaxhead.training.config.validate_config`); every error
    names the method."""
    from jaxhead.training.config import validate_config

    c = copy.deepcopy(train)
    for key, value in {**overrides, "steps": int(steps), "workdir": str(workdir)}.items():
        target = c
        *parents, leaf = key.split(".")
        try:
            for p in parents:
                target = target[p]
            if leaf not in target:
                raise KeyError(leaf)
            target[leaf] = value
        except (KeyError, AttributeError):
            raise UsageError(f"methods.{name}: unknown training config field {key!r} (every "
                             "field is documented in configs/base.py)") from None
        except (TypeError, ValueError) as e:
            raise UsageError(f"methods.{name}: {key}={value!r}: {e}".splitlines()[0]) from None
    try:
        validate_config(c)
    except UsageError as e:
        raise UsageError(f"methods.{name}: {e}") from None
    return c


# --- config ---------------------------------------------------------------------------------


def validate(config) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``({name: overrides}, {name: training config})`` of the selected methods; every config
    problem is a :class:`UsageError` before anything is computed."""
    from jaxhead.config_cli import check_workdir

    if int(config.steps) < 1:
        raise UsageError(f"steps={config.steps} (the budget of every method, >= 1)")
    check_workdir(config.workdir)
    t = config.train
    if t.models.generator == "demo" and int(t.seed) != 0:
        raise UsageError(f"train.seed={t.seed} with the demo generator: the evaluation's "
                         "'demo' reference is the seed-0 demo generator; keep train.seed=0")
    methods = parse_methods(config.methods, config.only)
    out = Path(config.workdir)
    cfgs = {n: method_config(t, n, ov, config.steps, out / n) for n, ov in methods.items()}
    eval_config(config, {n: str(out / n / "generator") for n in cfgs})
    return methods, cfgs


def eval_config(config, generators: Mapping[str, str]):
    """``config.eval`` with the frozen generator and ``generators`` as its generators, the
    training prompt, truncation and conditioning camera (seeded identities are mapped as in
    training), the teacher's SD checkpoint (unless ``eval.sd`` is set) and
    ``<workdir>/report`` as its workdir (validated, frozen)."""
    from jaxhead.evaluation import assets

    e = copy.deepcopy(config.eval)
    t = config.train
    e.generators = ",".join(f"{k}={v}" for k, v in {REFERENCE: t.models.generator,
                                                    **generators}.items())
    e.reference = REFERENCE
    e.prompt = t.prompt
    e.negative_prompt = t.negative_prompt
    e.truncation_psi, e.truncation_cutoff = t.truncation_psi, t.truncation_cutoff
    e.cond_yaw, e.cond_pitch = t.cond_yaw, t.cond_pitch
    e.sd = e.sd or t.models.sd
    e.workdir = str(Path(config.workdir) / REPORT_DIR)
    try:
        return assets.validate(e)
    except UsageError as err:
        raise UsageError(f"eval: {err}") from None


def missing_weights(config, cfgs: Mapping[str, Any]) -> list[str]:
    """Every missing converted model of the training runs and of the evaluation (the methods'
    generators are made by training), without repeats."""
    from jaxhead.evaluation import assets
    from jaxhead.training.models import missing_weights as train_missing

    need: dict[str, list[str]] = {}  # message -> the methods that need it
    for name, c in cfgs.items():
        if not (c.models.generator == "demo" and c.models.sd == "demo"):
            for m in train_missing(c):
                need.setdefault(m, []).append(name)
    out = [m if len(ns) == len(cfgs) else f"{m}\n    (for the methods {', '.join(ns)})"
           for m, ns in need.items()]
    for m in assets.missing_weights(eval_config(config, {})):
        if not (m.startswith(f"generator {REFERENCE!r}")  # listed by the training already
                and any(x.startswith("PanoHead generator") for x in out)):
            out.append(m)
    return out


# --- running --------------------------------------------------------------------------------


def train_method(config, workdir: Path, progress: bool = True) -> Path:
    """Train (or resume) one method with :func:`jaxhead.train.train_and_evaluate`; returns its
    exported generator directory."""
    from jaxhead import train

    summary = train.train_and_evaluate(config, workdir, progress=progress)
    return Path(summary["generator"])


def _config_json(c) -> dict[str, Any]:
    return json.loads(c.to_json_best_effort())


def finished(workdir: Path, c) -> Path | None:
    """The generator of a finished run of config ``c`` in ``workdir`` (its done file records
    the same config and the generator exists), else None."""
    p = workdir / DONE_FILE
    try:
        done = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    gen = Path(done.get("generator", ""))
    if done.get("config") != _config_json(c) or not (gen / "config.json").is_file():
        return None
    return gen


def _write_json(path: Path, payload: Any) -> None:
    from jaxhead.utils.params_io import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=1, default=str))


def _notes(methods: Mapping[str, Mapping[str, Any]], status: Mapping[str, dict[str, Any]],
           steps: int) -> str:
    lines = [f"## Methods ({steps} training steps each, the same identities)", "",
             "| method | overrides of the training config | run |", "|---|---|---|"]
    for name, ov in methods.items():
        s = status[name]
        spec = "; ".join(f"{k}={v!r}" for k, v in ov.items()) or "(the training config)"
        run = {"failed": f"failed: {s.get('error')}", "reused": "finished earlier, reused",
               }.get(s["status"], f"{s['status']} ({s['seconds']:.0f} s)")
        lines.append(f"| {name} | `{spec}` | {run.replace('|', '/')} |")
    return "\n".join(lines)


def compare(config, *, train_fn: TrainFn | None = None, verbose: bool = True
            ) -> dict[str, Any]:
    """Run the comparison of ``config`` (see ``configs/compare.py``). Returns ``{"methods":
    {name: {"status": "trained" | "reused" | "failed", ...}}, "evaluation": evaluate's result
    or None}``. ``train_fn(config, workdir) -> generator dir`` replaces the trainer (tests)."""
    from jaxhead import evaluate as ev
    from jaxhead.render import check_writable

    methods, cfgs = validate(config)
    missing = missing_weights(config, cfgs)
    if missing:
        raise MissingWeightsError("missing inputs of the comparison:\n  - "
                                  + "\n  - ".join(missing))
    train_fn = train_fn or (lambda c, wd: train_method(c, wd, progress=verbose))
    log = print if verbose else (lambda *a, **k: None)
    out = Path(config.workdir)
    check_writable(out)  # before any method trains (each would fail with its traceback)
    status: dict[str, dict[str, Any]] = {}
    n = len(cfgs)
    for i, (name, c) in enumerate(cfgs.items(), 1):
        wd = out / name
        spec = "; ".join(f"{k}={v!r}" for k, v in methods[name].items()) or "training config"
        gen = finished(wd, c)
        if gen is not None:
            log(f"jaxhead.compare: [{i}/{n}] {name}: finished earlier, reusing {gen}")
            status[name] = {"status": "reused", "generator": str(gen), "seconds": 0.0}
            continue
        log(f"jaxhead.compare: [{i}/{n}] {name}: training {config.steps} steps ({spec}) in "
            f"{wd}", flush=True)
        t0 = time.perf_counter()
        try:
            gen = Path(train_fn(c, wd))
        except Exception as e:  # noqa: BLE001 - a failing method must not stop the others
            msg = (str(e).splitlines() or [type(e).__name__])[0]
            if not isinstance(e, JaxheadError):
                traceback.print_exc()
                msg = f"{type(e).__name__}: {msg}"
            print(f"jaxhead.compare: [{i}/{n}] {name} failed: {msg}", file=sys.stderr,
                  flush=True)
            status[name] = {"status": "failed", "error": msg,
                            "seconds": time.perf_counter() - t0}
            continue
        secs = time.perf_counter() - t0
        _write_json(wd / DONE_FILE, {"method": name, "overrides": methods[name],
                                     "generator": str(gen), "seconds": secs,
                                     "config": _config_json(c)})
        status[name] = {"status": "trained", "generator": str(gen), "seconds": secs}
        log(f"jaxhead.compare: [{i}/{n}] {name}: done in {secs:.0f} s -> {gen}")
    for name in status:
        status[name]["overrides"] = methods[name]
    summary: dict[str, Any] = {"steps": int(config.steps), "methods": status,
                               "report": str(out / REPORT_DIR / "report.md")}
    _write_json(out / SUMMARY_FILE, summary)
    ok = {k: s["generator"] for k, s in status.items() if s["status"] != "failed"}
    if not ok:
        raise DataError("every method failed: " + "; ".join(
            f"{k}: {s['error']}" for k, s in status.items()))
    log(f"jaxhead.compare: evaluating {REFERENCE} + {list(ok)}")
    result = ev.evaluate(eval_config(config, ok), verbose=verbose,
                         notes=_notes(methods, status, int(config.steps)))
    return {"methods": status, "evaluation": result, "report": summary["report"]}


def _run(config) -> int:
    res = compare(config)
    failed = {k: s["error"] for k, s in res["methods"].items() if s["status"] == "failed"}
    if failed:
        raise DataError(f"{len(failed)} method(s) failed ("
                        + "; ".join(f"{k}: {m}" for k, m in failed.items())
                        + f"); the report {res['report']} covers the others")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: ``--config FILE [--config.field=value ...]``; errors are one line on stderr
    (exit 2 for usage, 1 for data / missing weights / a failed method)."""
    from jaxhead.config_cli import config_main

    return config_main(argv, doc=__doc__, prog="jaxhead.compare",
                       documented_in="configs/compare.py", validate=validate, run=_run)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    sys.exit(main())
