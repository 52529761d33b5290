"""Benchmarks: scripts that print tables of time, compile time and memory (README, docs)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable


def names_arg(ap: argparse.ArgumentParser, flag: str, text: str | None,
              known: Iterable[str]) -> list[str]:
    """The comma-separated names given to ``flag`` (all of ``known`` when empty), or an
    argparse error (exit 2, one line) naming the unknown ones and the known ones."""
    known = list(known)
    names = [n for n in (text or "").split(",") if n] or known
    unknown = [n for n in names if n not in known]
    if unknown:
        ap.error(f"{flag}: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    return names
