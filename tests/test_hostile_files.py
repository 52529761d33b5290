"""Files crafted by an attacker: a checkpoint that names a file outside its folder (shard index,
ONNX external data), a zip bomb in a TorchScript / torch archive, an image that declares 30000 x
30000 pixels or holds a header only, an ``.npz`` whose header claims 37 GiB, and converters fed
text or noise. Each is refused with one :class:`DataError` naming the file, before anything
large is allocated and without opening the outside file."""

import io
import json
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from convert_weights.common import inside, load_torch_file, shard_files
from jaxhead.errors import DataError, run_cli
from jaxhead.utils.params_io import save_params, staged_directory

torch = pytest.importorskip("torch")


# --- paths named inside a checkpoint -------------------------------------------------------

@pytest.mark.parametrize("name", ["../secret.safetensors", "/etc/passwd", "a/../../x.bin",
                                  "..\\x.bin", "C:\\x.bin", "c:x.bin", "", "a\0b"])
def test_inside_refuses_names_outside_the_folder(tmp_path, name):
    with pytest.raises(DataError, match="names"):
        inside(tmp_path, name, what="index.json")


def test_inside_keeps_names_in_the_folder(tmp_path):
    assert inside(tmp_path, "sub/model-00001.safetensors", what="x") == \
        tmp_path / "sub" / "model-00001.safetensors"


def _secret_and_index(tmp_path, index_name: str):
    """A loadable safetensors file outside the model folder and an index that names it."""
    from safetensors.numpy import save_file

    save_file({"w": np.ones(3, np.float32)}, str(tmp_path / "secret.safetensors"))
    folder = tmp_path / "model"
    folder.mkdir()
    index = folder / index_name
    index.write_text(json.dumps({"weight_map": {"w": "../secret.safetensors"}}))
    return folder, index


def test_clip_index_naming_an_outside_file_is_refused(tmp_path):
    from convert_weights import clip

    folder, _ = _secret_and_index(tmp_path, "model.safetensors.index.json")
    with pytest.raises(DataError, match="outside"):
        clip.read_state_dict(folder)


def test_diffusers_index_naming_an_outside_file_is_refused(tmp_path):
    from convert_weights import diffusers

    folder, _ = _secret_and_index(tmp_path, "diffusion_pytorch_model.safetensors.index.json")
    with pytest.raises(DataError, match="outside"):
        diffusers.find_weights(folder)


def test_shard_index_damage_is_one_error(tmp_path):
    idx = tmp_path / "m.safetensors.index.json"
    for text, needle in [("{", "not valid JSON"), ("[]", "no 'weight_map'"),
                         ('{"weight_map": {"a": 3}}', "invalid file"),
                         ('{"weight_map": {"a": "gone.safetensors"}}', "missing shards")]:
        idx.write_text(text)
        with pytest.raises(DataError, match=needle):
            shard_files(idx)


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    from convert_weights.arcface import read_onnx

    (tmp_path / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    t = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[4])
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        t.external_data.add(key=k, value=v)
    graph = onnx.helper.make_graph([], "g", [], [], initializer=[t])
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "model.onnx"
    path.write_bytes(onnx.helper.make_model(graph).SerializeToString())
    with pytest.raises(DataError, match="outside"):
        read_onnx(path)
    # the same tensor with its data inside the folder loads
    (tmp_path / "m" / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    t.external_data[0].value = "w.bin"
    graph = onnx.helper.make_graph([], "g", [], [], initializer=[t])
    path.write_bytes(onnx.helper.make_model(graph).SerializeToString())
    model = read_onnx(path)
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(model.graph.initializer[0]),
                                  np.arange(4, dtype=np.float32))


# --- zip bombs ---------------------------------------------------------------------------

def _rewrite_zip(src, dst, replace: dict[str, bytes], compress: int):
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(dst, "w") as z:
        for n, b in members.items():
            z.writestr(n, replace.get(n, b), compress_type=compress if n in replace
                       else zipfile.ZIP_STORED)


def _torchscript_archive(tmp_path):
    from tests.vgg_testlib import SMALL, save_nvidia_archive

    path = tmp_path / "vgg16.pt"
    save_nvidia_archive(path, SMALL)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    root = next(n for n in names if n.endswith("/data.pkl")).split("/")[0]
    return path, f"{root}/data/0"


def test_torchscript_storage_bomb_is_refused_before_inflating(tmp_path):
    from convert_weights.safe_pickle import UnsafePickleError, load_torchscript_tensors

    path, member = _torchscript_archive(tmp_path)
    bomb = tmp_path / "bomb.pt"
    _rewrite_zip(path, bomb, {member: bytes(64 << 20)}, zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 2 << 20
    with pytest.raises(UnsafePickleError, match="zip bomb"):
        load_torchscript_tensors(str(bomb))


def test_torchscript_storage_larger_than_its_record_is_refused(tmp_path):
    from convert_weights.safe_pickle import UnsafePickleError, load_torchscript_tensors

    path, member = _torchscript_archive(tmp_path)
    with zipfile.ZipFile(path) as z:
        data = z.read(member)
    big = tmp_path / "big.pt"
    _rewrite_zip(path, big, {member: data + bytes(4096)}, zipfile.ZIP_STORED)
    with pytest.raises(UnsafePickleError, match="storage '0' declares"):
        load_torchscript_tensors(str(big))
    assert load_torchscript_tensors(str(path))  # the untouched archive loads


def test_torch_zip_bomb_is_refused_before_torch_reads_it(tmp_path):
    ok = tmp_path / "ok.pth"
    torch.save({"w": torch.ones(8)}, ok)
    with zipfile.ZipFile(ok) as z:
        member = next(n for n in z.namelist() if "/data/" in n)
    bomb = tmp_path / "bomb.pth"
    _rewrite_zip(ok, bomb, {member: bytes(64 << 20)}, zipfile.ZIP_DEFLATED)
    with pytest.raises(DataError, match="zip bomb"):
        load_torch_file(bomb)
    np.testing.assert_array_equal(load_torch_file(ok)["w"], np.ones(8, np.float32))


# --- converters fed text or noise --------------------------------------------------------

@pytest.mark.parametrize("content", [b"hello world\nthis is text\n", b"", "noise"])
@pytest.mark.parametrize("suffix", [".pth", ".bin", ".ckpt"])
def test_text_or_noise_as_a_torch_checkpoint_is_one_error(tmp_path, content, suffix):
    if content == "noise":
        content = np.random.default_rng(len(suffix)).bytes(5000)
    p = tmp_path / f"weights{suffix}"
    p.write_bytes(content)
    with pytest.raises(DataError, match="weights"):
        load_torch_file(p)


@pytest.mark.parametrize("module,argv", [
    ("inception", ["{f}", "{o}"]), ("arcface", ["{f}", "{o}"]),
    ("lpips", ["--net", "vgg", "--vgg", "{f}", "--lin", "{f}", "{o}"]),
    ("diffusers", ["{f}", "{o}"]), ("depth_anything", ["{f}", "{o}"]),
    ("vgg16_nvidia", ["{f}", "{o}"]), ("panohead", ["{f}", "{o}"]),
])
def test_converters_given_text_print_one_line(tmp_path, capsys, module, argv):
    import importlib

    f = tmp_path / "text.pth"
    f.write_text("hello world\nthis is text\n")
    out = tmp_path / "out"
    main = importlib.import_module(f"convert_weights.{module}").main
    rc = run_cli(main, [a.format(f=f, o=out) for a in argv])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.count("\n") == 1 and "text.pth" in err and "Traceback" not in err, err
    assert not out.exists()


def test_empty_onnx_names_the_file(tmp_path, capsys):
    pytest.importorskip("onnx")
    from convert_weights import arcface

    f = tmp_path / "empty.onnx"
    f.write_bytes(b"")
    rc = run_cli(arcface.main, [str(f), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and "empty.onnx" in err and err.count("\n") == 1, err


def test_failed_diffusers_conversion_leaves_dst_as_it_was(tmp_path, capsys):
    from convert_weights import diffusers

    src = tmp_path / "pipe"
    (src / "unet").mkdir(parents=True)
    (src / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "X"]}))
    (src / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    (src / "unet" / "diffusion_pytorch_model.bin").write_text("not a checkpoint")
    dst = tmp_path / "dst"
    rc = run_cli(diffusers.main, [str(src), str(dst)])
    assert rc == 1 and "diffusion_pytorch_model.bin" in capsys.readouterr().err
    assert not dst.exists() and not (tmp_path / "dst.partial").exists()
    # an earlier conversion in DST survives a failed one untouched
    save_params(dst / "unet", {"w": np.ones(2, np.float32)}, {"k": 1})
    before = {p.relative_to(dst): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert run_cli(diffusers.main, [str(src), str(dst)]) == 1
    after = {p.relative_to(dst): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert after == before


def test_staged_directory_replaces_entries_only_on_success(tmp_path):
    dst = tmp_path / "d"
    (dst / "a").mkdir(parents=True)
    (dst / "a" / "old.txt").write_text("old")
    (dst / "keep.txt").write_text("keep")
    with staged_directory(dst) as out:
        (out / "a").mkdir()
        (out / "a" / "new.txt").write_text("new")
        (out / "b.txt").write_text("b")
    assert sorted(p.name for p in dst.iterdir()) == ["a", "b.txt", "keep.txt"]
    assert [p.name for p in (dst / "a").iterdir()] == ["new.txt"]
    with pytest.raises(RuntimeError), staged_directory(dst) as out:
        (out / "a").mkdir()
        raise RuntimeError("fails half way")
    assert [p.name for p in (dst / "a").iterdir()] == ["new.txt"]
    assert not (tmp_path / "d.partial").exists()


# --- images ------------------------------------------------------------------------------

def _png(width: int, height: int, *, pixels: bool = True) -> bytes:
    """A PNG whose IHDR declares ``width x height`` (the pixels of an 8 x 8 image, or none)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "PNG")
    raw = buf.getvalue()
    ihdr = bytearray(raw[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    chunk = b"IHDR" + bytes(ihdr)
    head = raw[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    rest = raw[33:] if pixels else struct.pack(">I", 0) + b"IEND" + struct.pack(
        ">I", zlib.crc32(b"IEND"))
    return head + rest


@pytest.mark.parametrize("case,needle", [
    ("bomb", "pixels"), ("header_only", "readable image"), ("not_image", "not a readable image"),
    ("missing", "not found")])
def test_images_are_checked_before_decoding(tmp_path, case, needle):
    from jaxhead import inversion_data, sample
    from jaxhead.utils.image_io import image_size

    p = tmp_path / f"{case}.png"
    if case == "bomb":
        p.write_bytes(_png(30000, 30000))
    elif case == "header_only":
        p.write_bytes(_png(512, 512, pixels=False))
    elif case == "not_image":
        p.write_bytes(b"GIF89a but not really")
    if case in ("bomb", "not_image", "missing"):
        with pytest.raises(DataError, match=needle):
            image_size(p)
    for load in (inversion_data.load_image, lambda q: sample.load_image(q, 64)):
        with pytest.raises(DataError, match=needle) as e:
            load(p)
        assert f"{case}.png" in str(e.value)


# --- npz headers -------------------------------------------------------------------------

def _forged_npz(path, key: str, shape: tuple[int, ...], data: bytes = b"\0" * 64):
    """An .npz whose ``key`` header declares ``shape`` float32 but holds ``data``."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{key}.npy", header.getvalue() + data)  # the header starts with the magic


def test_forged_w_header_is_refused_before_allocating(tmp_path):
    """In a process that cannot map 2 GiB, a w header claiming [1, 1e5, 1e5] (37 GiB) is one
    DataError, never an allocation (np.load would try to allocate it)."""
    bad = tmp_path / "bad.npz"
    _forged_npz(bad, "w", (1, 100_000, 100_000))
    code = f"""
import resource
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from jaxhead.errors import DataError
from jaxhead.latents import read_ws
try:
    read_ws({str(bad)!r})
except DataError as e:
    print("DataError:", e)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "DataError" in r.stdout, r
    assert "declares [1, 100000, 100000] float32 (40000000000 bytes)" in r.stdout, r


@pytest.mark.parametrize("shape,data,needle", [
    ((1, 14, 512), b"\0" * 64, "holds"),               # header larger than the data
    ((1, 4, 4), b"\0" * 65, "holds"),                  # data larger than the header
    ((1, 4000, 4096), None, "limit"),                  # over the w size limit
    ((14, 512), b"\0" * (14 * 512 * 4), "expected float [1, num_ws, w_dim]"),
])
def test_read_ws_checks_the_header(tmp_path, shape, data, needle):
    from jaxhead.latents import read_ws

    p = tmp_path / "w.npz"
    _forged_npz(p, "w", shape, data if data is not None else b"\0" * 64)
    with pytest.raises(DataError, match=needle.replace("[", r"\[")):
        read_ws(p)


def test_read_npz_roundtrip_and_refusals(tmp_path):
    from jaxhead.utils.npz_io import read_npz

    p = tmp_path / "a.npz"
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez(p, a=a, f=np.asfortranarray(a), s=np.array("text"))
    got = read_npz(p, ["a", "f", "s"], shapes={"a": [(3, None)]})
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["f"], a)
    assert str(got["s"]) == "text"
    with pytest.raises(DataError, match=r"expected \[4, \*\]"):
        read_npz(p, ["a"], shapes={"a": [(4, None)]})
    with pytest.raises(DataError, match="no array 'b'"):
        read_npz(p, ["b"])
    np.savez(p, o=np.array([{"x": 1}], dtype=object))
    with pytest.raises(DataError, match="pickle"):
        read_npz(p, ["o"])
    raw = bytearray((tmp_path / "a.npz").read_bytes())
    (tmp_path / "c.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="c.npz"):
        read_npz(tmp_path / "c.npz", ["o"])


# --- non-finite flags --------------------------------------------------------------------

@pytest.mark.parametrize("module,argv", [
    ("render", ["--psi", "nan", "--seeds", "0", "--out", "{o}"]),
    ("render", ["--pitch", "inf", "--seeds", "0", "--out", "{o}"]),
    ("sample", ["--sd", "x", "--prompt", "a", "--eta", "nan", "--out", "{o}"]),
    ("sample", ["--sd", "x", "--prompt", "a", "--guidance=-inf", "--out", "{o}"]),
])
def test_non_finite_flags_are_usage_errors(tmp_path, capsys, module, argv):
    import importlib

    main = importlib.import_module(f"jaxhead.{module}").main
    rc = run_cli(main, [a.format(o=tmp_path / "o") for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and "must be a finite number" in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()
