"""The digits GPU recipe (experiments/recipes/digits_gpu.md) runs as written, here for 3 CPU steps."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

RECIPE = Path(__file__).resolve().parents[1] / "experiments" / "recipes" / "digits_gpu.md"


def test_digits_recipe_runs_and_resumes(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", RECIPE.read_text(), flags=re.S)
    assert len(blocks) == 1
    script = tmp_path / "recipe.py"
    script.write_text(blocks[0])
    env = dict(os.environ, DIGITS_STEPS="3", DIGITS_BATCH="256", DIGITS_OUT=str(tmp_path / "out"), DIGITS_DEVICE="cpu",
               OMP_NUM_THREADS="1")
    for expected_step in (3, 3):  # the second run finds the checkpoint and resumes (nothing left to do)
        res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300,
                             cwd=Path(__file__).resolve().parents[1])
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"step {expected_step};" in res.stdout
    state = torch.load(tmp_path / "out" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 3 and state["ema"] is not None
