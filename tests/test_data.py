"""The packaged 8x8 digits: same numbers as scikit-learn, scaling, dequantization, no sklearn import."""
from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import densityformula.data as dd
from densityformula.data import Digits, digits_log_det_jacobian, digits_split, load_digits, load_digits_raw

DATA_DIR = Path(dd.__file__).parent


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_shipped_file_is_the_documented_copy_with_its_license():
    blob = (DATA_DIR / "digits.csv.gz").read_bytes()
    assert hashlib.md5(blob).hexdigest() == "9b335364a7bfd63947c7480a5bd51f2d"
    note = (DATA_DIR / "LICENSE_digits.txt").read_text()
    assert "BSD 3-Clause" in note and "9b335364a7bfd63947c7480a5bd51f2d" in note


def test_raw_matches_scikit_learn():
    sk = pytest.importorskip("sklearn.datasets")
    ref = sk.load_digits()
    pix, lab = load_digits_raw()
    assert pix.shape == (1797, 64) and lab.shape == (1797,)
    assert torch.equal(pix, torch.as_tensor(ref.data).long())
    assert torch.equal(lab, torch.as_tensor(ref.target).long())
    assert torch.equal(torch.bincount(lab), torch.as_tensor([(ref.target == k).sum() for k in range(10)]))


def test_loader_does_not_import_sklearn():
    code = (
        "import sys, densityformula.data as d; x = d.load_digits(); "
        "assert x.shape == (1797, 64); assert 'sklearn' not in sys.modules, 'sklearn imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("scale, lo, hi", [("symmetric", -1.0, 1.0), ("unit", 0.0, 1.0), ("counts", 0.0, 17.0)])
def test_dequantized_data_inverts_to_the_counts(scale, lo, hi):
    pix, _ = load_digits_raw()
    x = load_digits(scale, generator=_gen(0), dtype=torch.float64)
    assert x.dtype == torch.float64 and x.shape == (1797, 64)
    assert float(x.min()) >= lo and float(x.max()) < hi
    c = (x - lo) / (hi - lo) * 17
    assert torch.equal(torch.floor(c).long(), pix)
    u = (c - pix).flatten()
    # the dequantization noise is U[0, 1): KS distance against its CDF
    us = torch.sort(u).values
    n = us.numel()
    ks = float(torch.maximum(torch.arange(1, n + 1) / n - us, us - torch.arange(n) / n).max())
    assert ks < 1.63 / math.sqrt(n)  # 1% level


def test_float32_default_stays_in_the_half_open_interval():
    x = load_digits(generator=_gen(1))
    assert x.dtype == torch.float32 and float(x.min()) >= -1.0 and float(x.max()) < 1.0


def test_bin_centres_without_dequantization_and_seeded_noise():
    pix, lab = load_digits_raw()
    x, y = load_digits(dequantize=False, dtype=torch.float64, return_labels=True)
    torch.testing.assert_close(x, -1 + 2 * (pix.double() + 0.5) / 17, rtol=0, atol=1e-15)
    assert torch.equal(y, lab)
    a = load_digits(generator=_gen(3))
    assert torch.equal(a, load_digits(generator=_gen(3)))
    assert not torch.equal(a, load_digits(generator=_gen(4)))
    assert torch.equal(load_digits(), load_digits())  # generator=None: seed 0, documented


def test_log_det_jacobian_matches_the_map():
    for scale, (lo, hi) in dd.DIGITS_SCALES.items():
        c = torch.tensor([3.25], dtype=torch.float64, requires_grad=True)
        x = lo + (hi - lo) * c / 17
        (slope,) = torch.autograd.grad(x.sum(), c)
        assert digits_log_det_jacobian(scale) == pytest.approx(64 * math.log(float(slope)), rel=1e-14)
    assert digits_log_det_jacobian("symmetric") == pytest.approx(64 * math.log(2 / 17))


def test_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        load_digits("minus_one_one")
    with pytest.raises(TypeError, match="dequantize"):
        load_digits(dequantize="uniform")
    with pytest.raises(TypeError, match="generator"):
        load_digits(generator=0)
    with pytest.raises(TypeError, match="dtype"):
        load_digits(dtype=torch.int64)
    with pytest.raises(ValueError, match="d"):
        digits_log_det_jacobian("unit", d=0)


def test_split_partitions_the_rows():
    train, test = digits_split(0.2, seed=0)
    assert train.numel() + test.numel() == 1797 and test.numel() == 359
    assert torch.equal(torch.sort(torch.cat([train, test])).values, torch.arange(1797))
    assert torch.equal(digits_split(0.2, seed=0)[1], test)
    with pytest.raises(ValueError, match="test_fraction"):
        digits_split(1.0)


def test_digits_source_draws_fresh_dequantized_rows_of_its_split():
    src = Digits(split="test")
    pix, lab = load_digits_raw()
    _, test = digits_split()
    x, y = src.sample(5000, generator=_gen(0), return_labels=True)
    assert x.shape == (5000, 64) and x.dtype == torch.float32 and float(x.max()) < 1.0
    c = (x.double() + 1) / 2 * 17
    rows = torch.floor(c).long()
    # every drawn row is a test row (match on counts and label), with fresh noise
    test_rows = {(tuple(pix[i].tolist()), int(lab[i])) for i in test.tolist()}
    assert all((tuple(r.tolist()), int(label)) in test_rows for r, label in zip(rows[:300], y[:300]))
    x2 = src.sample(5000, generator=_gen(1))
    assert not torch.equal(x, x2)
    assert src.log_det_jacobian == pytest.approx(64 * math.log(2 / 17))
    with pytest.raises(ValueError, match="split"):
        Digits(split="validation")
    with pytest.raises(ValueError, match="n"):
        src.sample(-1)
