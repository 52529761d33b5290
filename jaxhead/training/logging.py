"""Scalars (JSONL, plus TensorBoard when tensorboardX is installed) and preview images."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _tensorboard_writer() -> type | None:
    """tensorboardX's ``SummaryWriter``, or None when it is not installed. tensorboardX imports
    torch whenever torch is installed (5 s and ~300 MB here, only for an ``isinstance`` of
    images); jaxhead never needs torch at run time, so torch is hidden while tensorboardX loads."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # ``import torch`` raises ImportError
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """Appends ``{"step": s, **scalars}`` lines to ``metrics.jsonl``; mirrors to TensorBoard."""

    def __init__(self, workdir: str | os.PathLike, purge_step: int | None = None) -> None:
        """``purge_step``: on resume, TensorBoard drops events at or after it that an earlier
        (interrupted) process logged, so re-logged steps are not duplicated."""
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._f = open(self.dir / "metrics.jsonl", "a")  # noqa: SIM115
        self._tb = None
        writer_cls = _tensorboard_writer()
        if writer_cls is not None:
            self._tb = writer_cls(str(self.dir / "tb"), purge_step=purge_step)

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        vals = {k: float(v) for k, v in scalars.items()}
        self._f.write(json.dumps({"step": step, **vals}) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in vals.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def save_png(path: str | os.PathLike, img: np.ndarray) -> None:
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
