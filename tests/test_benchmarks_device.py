"""benchmarks/device.py runs (on this CPU, toy sizes) and prints its table."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import device

ROOT = Path(__file__).resolve().parents[1]


def _run(rows: str, timeout: float) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "benchmarks.device", "--small", "--steps", "1",
                          "--rows", rows], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=timeout, check=False)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("device: ") and "--small" in lines[0]
    assert lines[1].split()[:4] == ["row", "compile", "s", "s/call"]
    return lines[2:]


def test_small_table_of_a_unet_row():
    """The bf16 UNet row and the torch row (skipped without CUDA): ~30 s on 2 cores."""
    lines = _run("unet-fwd-bf16,torch-unet-fp32", 300)
    assert [x.split()[0] for x in lines] == ["unet-fwd-bf16", "torch-unet-fp32"]
    compile_s, call_s, peak = (float(v) for v in lines[0].split()[1:4])
    assert compile_s > 0 and call_s > 0 and peak > 0
    assert "skipped" in lines[1] or float(lines[1].split()[2]) > 0


@pytest.mark.heavy  # every row at toy size: ~8 minutes on 2 cores (run with -m heavy)
def test_small_table_of_every_row():
    lines = _run(",".join(device.ROWS), 1800)
    assert [x.split()[0] for x in lines] == list(device.ROWS)
    assert not [x for x in lines if "failed" in x or "timed out" in x]


def test_unknown_row_is_one_usage_error():
    with pytest.raises(SystemExit) as e:
        device.main(["--rows", "unet-fwd-fp8"])
    assert e.value.code == 2
