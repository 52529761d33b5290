"""The configuration of an ArcFace network (:mod:`jaxhead.models.arcface`): which network and
its sizes, shared by the two implementations (:mod:`jaxhead.models.iresnet`,
:mod:`jaxhead.models.ir_se`) and the loader without an import circle."""

from __future__ import annotations

import dataclasses
from typing import Any

MODEL_NAME = "arcface"
ARCHS = ("iresnet", "ir_se")


@dataclasses.dataclass(frozen=True)
class ArcFaceConfig:
    """Which network and its sizes (hashable: static data of :class:`ArcFaceParams`).

    ``arch``: "iresnet" (insightface) or "ir_se" (TreB1eN / pSp); ``layers``: blocks per
    stage (the first of each has stride 2); ``widths``: channels per stage; ``stem``: channels
    of the first conv; ``se_reduction``: SE bottleneck ratio (ir_se only).
    """

    arch: str = "iresnet"
    layers: tuple[int, ...] = (3, 4, 14, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem: int = 64
    embedding_dim: int = 512
    se_reduction: int = 16

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if len(self.layers) != 4 or len(self.widths) != 4 or min(self.layers) < 1:
            raise ValueError(f"four stages of at least one block expected (112 px -> 7 px), "
                             f"got layers={self.layers}, widths={self.widths}")

    def to_json(self) -> dict[str, Any]:
        return {"model": MODEL_NAME, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ArcFaceConfig:
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        for k in ("layers", "widths"):
            if k in kw:
                kw[k] = tuple(int(v) for v in kw[k])
        return cls(**kw)


__all__ = ["ARCHS", "MODEL_NAME", "ArcFaceConfig"]
