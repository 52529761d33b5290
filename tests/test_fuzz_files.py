"""Every kind of file the commands read, with bytes flipped or cut: the reader either gives
back what a valid file holds (finite values of the right shapes) or one ``error:`` line and exit
code 1, never a traceback, and it leaves nothing half-written or non-finite behind.

Mutations are drawn from a fixed seed: flips of one byte at random positions, truncations at
random lengths, the empty file."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from jaxhead.errors import run_cli

FLIPS, CUTS = 10, 5


def mutations(data: bytes, seed: int) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(seed)
    out = [("empty", b"")]
    for _ in range(FLIPS):
        i = int(rng.integers(len(data)))
        b = bytearray(data)
        b[i] ^= int(rng.integers(1, 256))
        out.append((f"flip@{i}", bytes(b)))
    for _ in range(CUTS):
        n = int(rng.integers(1, len(data)))
        out.append((f"cut@{n}", data[:n]))
    return out


def _finite(tree) -> bool:
    import jax

    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.inexact))


def check_reader(capsys, target: Path, good: bytes, read: Callable[[], object], seed: int,
                 after: Callable[[], None] | None = None) -> dict[str, int]:
    """Write each mutation of ``good`` to ``target`` and run ``read`` as a command would:
    exit 0 with finite results, or exit 1 with one line. Returns the count of each outcome."""
    outcomes = {"read": 0, "refused": 0}
    for what, data in mutations(good, seed):
        target.write_bytes(data)
        result = {}

        def main(argv, result=result):
            result["value"] = read()
            return 0

        capsys.readouterr()
        rc = run_cli(main, [])
        err = capsys.readouterr().err
        if rc == 0:
            assert _finite(result["value"]), f"{target.name} {what}: non-finite values read"
            outcomes["read"] += 1
        else:
            assert rc == 1, (target.name, what, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (target.name, what, err)
            outcomes["refused"] += 1
        if after is not None:
            after()
    target.write_bytes(good)
    read()  # the intact file still reads
    return outcomes


def test_w_npz(tmp_path, capsys):
    from jaxhead.latents import read_ws, save_ws

    p = save_ws(tmp_path / "a.npz", np.random.default_rng(0).standard_normal((1, 14, 512)))
    out = check_reader(capsys, p, p.read_bytes(), lambda: read_ws(p), seed=1)
    assert out["refused"] >= CUTS  # a zip's CRC and directory catch cuts and most flips


def test_dataset_json(tmp_path, capsys):
    from PIL import Image

    from jaxhead.inversion_data import list_targets

    cam = [1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 2.7, 0, 0, 0, 1, 4.2647, 0, 0.5, 0, 4.2647, 0.5,
           0, 0, 1]
    for n in ("a.png", "b.png"):
        Image.new("RGB", (64, 64)).save(tmp_path / n)
    p = tmp_path / "dataset.json"
    good = json.dumps({"labels": [[n, cam] for n in ("a.png", "b.png")]}).encode()
    out = check_reader(capsys, p, good,
                       lambda: [t.camera for t in list_targets(tmp_path)], seed=2)
    assert out["refused"] >= CUTS


def test_converted_params(tmp_path, capsys):
    from jaxhead.utils.params_io import load_params, save_params

    d = tmp_path / "model"
    save_params(d, {"a": {"w": np.ones((4, 3), np.float32)}, "b": np.arange(5.0)}, {"k": 1})
    for name, seed in (("params.safetensors", 3), ("config.json", 4)):
        target = d / name
        good = target.read_bytes()
        out = check_reader(capsys, target, good, lambda: load_params(d)[0], seed=seed)
        # the content hash catches every change of a tensor byte or of the hash itself
        assert out["refused"] >= FLIPS // 2 + CUTS, (name, out)


def test_shard_index(tmp_path, capsys):
    from safetensors.numpy import save_file

    from convert_weights.common import load_torch_file, shard_files

    save_file({"w": np.ones(3, np.float32)}, str(tmp_path / "model-00001.safetensors"))
    idx = tmp_path / "model.safetensors.index.json"
    good = json.dumps({"weight_map": {"w": "model-00001.safetensors"}}).encode()
    check_reader(capsys, idx, good,
                 lambda: [load_torch_file(s) for s in shard_files(idx)], seed=5)


def test_safetensors_checkpoint(tmp_path, capsys):
    from safetensors.numpy import save_file

    from convert_weights.common import load_torch_file

    p = tmp_path / "model.safetensors"
    save_file({"w": np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)}, str(p))
    check_reader(capsys, p, p.read_bytes(), lambda: load_torch_file(p), seed=6)


def test_torch_checkpoint(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from convert_weights.common import load_torch_file

    p = tmp_path / "model.pth"
    torch.save({"w": torch.linspace(-1, 1, 64).reshape(8, 8)}, p)
    out = check_reader(capsys, p, p.read_bytes(), lambda: load_torch_file(p), seed=7)
    assert out["refused"] >= CUTS


def test_damaged_output_dir_is_left_as_it_was(tmp_path, capsys):
    """A refused conversion keeps an earlier output untouched (nothing half-written)."""
    from convert_weights import clip

    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("earlier")
    rc = run_cli(clip.main, [str(src), str(dst)])
    assert rc == 1 and capsys.readouterr().err.count("\n") == 1
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]
    shutil.rmtree(src)


def test_checkpoint_files(tmp_path, capsys):
    """Every file of the newest checkpoint step, flipped or cut: restore gives step 2's values,
    or step 1's after moving step 2 aside (reported), or one error line; never other values."""
    import flax.struct
    import jax
    import jax.numpy as jnp

    from jaxhead.training import checkpoint

    @flax.struct.dataclass
    class State:
        step: jax.Array
        w: jax.Array

    def w(step):
        return np.asarray(jax.random.normal(jax.random.key(step), (32, 32)))

    mgr = checkpoint.manager(tmp_path, 3)
    for s in (1, 2):
        checkpoint.save(mgr, State(jnp.int32(s), jnp.asarray(w(s))))
    root = tmp_path / "checkpoints"
    pristine = tmp_path / "pristine"
    shutil.copytree(root, pristine)
    files = sorted(p.relative_to(root / "2") for p in (root / "2").rglob("*") if p.is_file())
    assert files
    for k, rel in enumerate(files):
        target = root / "2" / rel

        def restore():
            st = checkpoint.restore_latest(checkpoint.manager(tmp_path, 3),
                                           State(jnp.int32(0), jnp.zeros((32, 32))),
                                           report=lambda s: None)
            step = int(st.step)
            np.testing.assert_array_equal(np.asarray(st.w), w(step))  # never other values
            return np.asarray(st.w)

        def reset():
            shutil.rmtree(root)
            shutil.rmtree(tmp_path / checkpoint.DAMAGED_DIR, ignore_errors=True)
            shutil.copytree(pristine, root)

        check_reader(capsys, target, target.read_bytes(), restore, seed=10 + k, after=reset)


def test_metrics_jsonl(tmp_path, capsys):
    from jaxhead.training.workdir import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    good = "".join(json.dumps({"step": s, "loss": 0.5 / s}) + "\n" for s in (1, 2, 3)).encode()

    def read():
        truncate_metrics(tmp_path, 2)
        return [json.loads(x)["loss"] for x in path.read_text().splitlines()]

    check_reader(capsys, path, good, read, seed=20)


def test_evaluation_cache_entry(tmp_path, capsys):
    """A damaged cache entry is never an error: it reads back whole or counts as missing."""
    from jaxhead.evaluation.cache import Cache

    cache = Cache(tmp_path)
    inputs = {"kind": "render", "id": 3}
    arrays = {"image": np.arange(48, dtype=np.uint8).reshape(4, 4, 3),
              "depth": np.linspace(2, 3, 16, dtype=np.float32).reshape(4, 4, 1)}
    p = cache.put("renders", inputs, arrays)
    good = p.read_bytes()
    for what, data in mutations(good, seed=30):
        p.write_bytes(data)
        got = cache.get("renders", inputs, ["image", "depth"])
        assert got is None or all(np.array_equal(got[k], arrays[k]) for k in arrays), what
    p.write_bytes(good)
    assert cache.get("renders", inputs, ["image", "depth"]) is not None
