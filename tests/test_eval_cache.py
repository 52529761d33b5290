"""The evaluation cache on crafted damaged entries: a cut or altered zip directory, a missing
array, an entry made from another description. Each reads as absent (the caller recomputes
it and the entry is replaced); nothing raises."""

import numpy as np
import pytest

from jaxhead.evaluation.cache import INPUTS, Cache, content_key

INPUTS_A = {"kind": "render", "generator": "g", "w": "abc", "yaw": [0.0, 0.5]}
ARRAYS = {"image": np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3),
          "depth": np.ones((2, 4, 4, 1), np.float32)}
NAMES = ("image", "depth")


def _damage(path, how: str) -> None:
    b = bytearray(path.read_bytes())
    if how == "compression_method":  # NotImplementedError from zipfile before the fix
        b[b.rfind(b"PK\x01\x02") + 10] = 99
    elif how == "directory_cut":
        b = b[: b.rfind(b"PK\x01\x02") + 20]
    elif how == "member_flipped":  # a CRC mismatch when the array is read
        b[len(b) // 4] ^= 0xFF
    elif how == "truncated":
        b = b[: len(b) // 2]
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("how", ["compression_method", "directory_cut", "member_flipped",
                                 "truncated"])
def test_damaged_zip_is_absent_and_replaced(tmp_path, how):
    cache = Cache(tmp_path)
    p = cache.put("renders", INPUTS_A, ARRAYS)
    _damage(p, how)
    assert cache.get("renders", INPUTS_A, NAMES) is None
    cache.put("renders", INPUTS_A, ARRAYS)  # the recomputed entry replaces it
    got = cache.get("renders", INPUTS_A, NAMES)
    assert set(got) == set(NAMES)
    for k in NAMES:
        np.testing.assert_array_equal(got[k], ARRAYS[k])


def test_entry_without_an_array_it_should_hold_is_absent(tmp_path):
    cache = Cache(tmp_path)
    p = cache.path("renders", content_key(INPUTS_A))
    p.parent.mkdir(parents=True)
    np.savez(p, image=ARRAYS["image"])  # written without depth (and without its description)
    assert cache.get("renders", INPUTS_A, NAMES) is None
    cache.put("renders", INPUTS_A, {"image": ARRAYS["image"]})  # description, but no depth
    assert cache.get("renders", INPUTS_A, NAMES) is None
    assert set(cache.get("renders", INPUTS_A, ("image",))) == {"image"}


def test_entry_made_from_another_description_is_absent(tmp_path):
    """An entry copied (or renamed) onto another key's file is not that key's content."""
    cache = Cache(tmp_path)
    other = {**INPUTS_A, "w": "def"}
    src = cache.put("renders", other, ARRAYS)
    dst = cache.path("renders", content_key(INPUTS_A))
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    assert cache.get("renders", INPUTS_A, NAMES) is None
    assert cache.get("renders", other, NAMES) is not None
    with np.load(src) as z:
        assert INPUTS in z.files
    with pytest.raises(ValueError, match="reserved"):
        cache.put("renders", INPUTS_A, {INPUTS: np.zeros(1)})
