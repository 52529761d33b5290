"""The ``--config FILE [--config.field=value ...]`` command line shared by ``jaxhead.train``,
``jaxhead.evaluate`` and ``jaxhead.compare`` (ml_collections config files): one shell
(:func:`config_main`), the parser, the workdir check and the persistent XLA compilation cache."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import jax

# the one line of every command when --config is missing
CONFIG_REQUIRED = ("--config FILE is required (the experiment's config file, e.g. --config "
                   "configs/demo.py for jaxhead.train, configs/eval_demo.py for "
                   "jaxhead.evaluate, configs/compare_demo.py for jaxhead.compare)")


def parse_config(argv: Sequence[str], prog: str = "jaxhead.train",
                 documented_in: str = "configs/base.py"):
    """``--config FILE [--config.key=value ...]`` -> the config (unvalidated). A missing
    ``--config``, bad flags, a missing or non-Python config file and unknown fields raise
    :class:`UsageError`, whose message points at ``documented_in`` (the file that documents
    every field)."""
    from absl import flags
    from ml_collections import config_flags

    from jaxhead.errors import UsageError

    argv = [prog, *argv]
    path = None
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
    if path is None:
        raise UsageError(CONFIG_REQUIRED)
    if not Path(path).is_file():
        raise UsageError(f"config file not found: {path!r} (e.g. --config configs/demo.py)")
    if Path(path).suffix != ".py":
        raise UsageError(f"--config must be a Python file defining get_config() (as in "
                         f"configs/), got {path!r}")
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", path, "experiment config file", flag_values=fv,
                                    lock_config=True, sys_argv=argv)
    try:
        fv(argv)
        return fv.config
    except flags.Error as e:
        raise UsageError(str(e).splitlines()[0]) from None
    except (AttributeError, KeyError) as e:  # an override of a field the config lacks
        field = str(e).strip("'\"")
        bad = [a.split("=")[0] for a in argv if a.startswith("--config.")
               and a.split("=")[0].rsplit(".", 1)[-1] == field]
        raise UsageError(f"unknown config field {bad[0] if bad else field!r} (every field is "
                         f"documented in {documented_in})") from None
    except Exception as e:  # an error inside the config file itself
        raise UsageError(f"could not load config file {path!r}: {type(e).__name__}: {e}"
                         .splitlines()[0]) from None


def check_workdir(workdir: str, field: str = "workdir") -> None:
    """Refuse an empty ``workdir`` (it would write into the current directory), with the one
    line every command gives (:class:`UsageError`)."""
    from jaxhead.errors import UsageError

    if not str(workdir).strip():
        raise UsageError(f"{field} is empty: set --config.{field}=DIR (an empty workdir would "
                         "write into the current directory)")


def enable_compilation_cache(path: str) -> str | None:
    """Keep compiled XLA programs in ``path`` (``"auto"``: ``$XDG_CACHE_HOME/jaxhead/xla``, by
    default ``~/.cache/jaxhead/xla``), so that a rerun of the same config loads its train step
    instead of compiling it; ``""`` leaves JAX's cache off. Returns the directory used."""
    if not path:
        return None
    if path == "auto":
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                 ".cache")
        path = os.path.join(base, "jaxhead", "xla")
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path


def config_main(argv: Sequence[str] | None, *, doc: str, prog: str, documented_in: str,
                validate: Callable[[object], object], run: Callable[[object], object]) -> int:
    """The command line of a config-driven tool: ``-h`` prints ``doc``; otherwise the config
    is parsed (``documented_in`` names the file documenting its fields), its workdir checked
    and ``validate(config)`` run (every config problem before the compilation cache directory
    is created), then ``run(config)`` (which resolves the config again itself). Errors are one
    line on stderr (exit 2 for usage, 1 for data); returns the exit code."""
    from absl import logging

    from jaxhead.errors import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(doc)
        return 0
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO

    def body(args):
        config = parse_config(args, prog=prog, documented_in=documented_in)
        check_workdir(config.workdir)
        validate(config)
        enable_compilation_cache(config.compilation_cache)
        return run(config) or 0

    return run_cli(body, argv)
