"""Convert a transformers CLIP folder (``CLIPModel``) to jaxhead's layout.

    python -m convert_weights.clip SRC DST

SRC: a local transformers CLIP folder, e.g. a copy of ``openai/clip-vit-base-patch32`` or
``openai/clip-vit-large-patch14``: ``config.json`` (model_type "clip") and the weights as
``model.safetensors``, ``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``) or a
sharded ``*.index.json`` of either. DST gets ``params.safetensors`` + ``config.json`` (load with
``jaxhead.metrics.clip.load_clip``) and ``tokenizer/`` with the tokenizer files SRC has
(``load_clip_tokenizer``). A ``preprocessor_config.json`` whose settings differ from the OpenAI
CLIP preprocessing that ``jaxhead.metrics.clip.preprocess`` implements is reported.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from convert_weights.common import load_torch_file, shard_files
from jaxhead.errors import ArgumentParser, DataError, run_cli
from jaxhead.models.clip import MODEL_NAME, CLIPConfig, convert
from jaxhead.utils.params_io import save_params

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")


def read_state_dict(src: Path) -> tuple[dict[str, np.ndarray], str]:
    """The folder's weights (single file first, else a sharded index) -> (state dict, name)."""
    for name in WEIGHT_FILES:
        if (src / name).is_file():
            return load_torch_file(src / name), name
        index = src / f"{name}.index.json"
        if index.is_file():
            state: dict[str, np.ndarray] = {}
            for shard in shard_files(index):
                state.update(load_torch_file(shard))
            return state, index.name
    raise DataError(f"{str(src)!r} has no CLIP weights (looked for "
                    f"{', '.join(WEIGHT_FILES)} and their .index.json)")


def preprocessor_notes(src: Path, config: CLIPConfig) -> list[str]:
    """Differences between SRC's ``preprocessor_config.json`` and ``preprocess``'s settings."""
    from jaxhead.metrics.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    path = src / "preprocessor_config.json"
    if not path.is_file():
        return []
    pc = json.loads(path.read_text())
    s = config.vision.image_size
    size, crop = pc.get("size", s), pc.get("crop_size", s)
    want = {"size": (size.get("shortest_edge", size) if isinstance(size, dict) else size, s),
            "crop_size": (crop.get("height", crop) if isinstance(crop, dict) else crop, s),
            "resample": (pc.get("resample", 3), 3),
            "image_mean": (tuple(pc.get("image_mean", OPENAI_CLIP_MEAN)), OPENAI_CLIP_MEAN),
            "image_std": (tuple(pc.get("image_std", OPENAI_CLIP_STD)), OPENAI_CLIP_STD)}
    return [f"{k}={got!r} (jaxhead preprocesses with {exp!r})"
            for k, (got, exp) in want.items() if not np.allclose(got, exp)]


def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = ArgumentParser(prog="python -m convert_weights.clip",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="transformers CLIPModel folder (config.json + weights)")
    ap.add_argument("dst", help="output directory (params.safetensors, config.json, tokenizer/)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    src = Path(a.src)
    if not (src / "config.json").is_file():
        raise DataError(f"{str(src)!r} is not a transformers model folder (no config.json)")
    try:
        config = CLIPConfig.from_transformers(json.loads((src / "config.json").read_text()))
    except ValueError as e:
        raise DataError(f"{src / 'config.json'}: {e}") from None
    state, weights_name = read_state_dict(src)
    try:
        params = convert(state, config)
    except ValueError as e:
        raise DataError(f"{src / weights_name}: {e}") from None
    save_params(a.dst, params, {"model": MODEL_NAME, "source": src.resolve().name,
                                **config.to_transformers()})
    tokenizer = [f for f in TOKENIZER_FILES if (src / f).is_file()]
    if tokenizer:
        (Path(a.dst) / "tokenizer").mkdir(exist_ok=True)
        for f in tokenizer:
            shutil.copyfile(src / f, Path(a.dst) / "tokenizer" / f)
    for note in preprocessor_notes(src, config):
        print(f"note: preprocessor_config.json {note}", file=sys.stderr)
    print(f"converted CLIP ({src.resolve().name}: vision {config.vision.hidden_size}-d x "
          f"{config.vision.num_hidden_layers}, patch {config.vision.patch_size}, text "
          f"{config.text.hidden_size}-d, projection {config.projection_dim}) -> {a.dst}"
          + ("" if tokenizer else " (no tokenizer files in SRC: text_embeds needs token ids "
                                  "from a CLIPTokenizer)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
