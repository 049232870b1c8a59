import os

import pytest

from deltadit import validate
from deltadit.errors import DeltaDiTError


@pytest.mark.parametrize("check,args,match", [
    (validate.integer, ("steps", 2.5, 1, 10), r"steps \| 2.5 is not an integer. Expected: an integer in \[1, 10\]\."),
    (validate.integer, ("steps", True, 1, 10), r"steps \| True is not an integer"),
    (validate.integer, ("steps", 11, 1, 10), r"steps \| 11 is out of range"),
    (validate.real, ("scale", float("nan"), 0, 100), r"scale \| nan is out of range. Expected: a finite number in \[0, 100\]"),
    (validate.real, ("scale", "x"), r"scale \| 'x' is not a number"),
    (validate.fraction, ("budget", 0.0), r"budget \| 0.0 is out of range. Expected: a number in \(0, 1\]"),
    (validate.fraction, ("budget", 1.5), r"budget \| 1.5 is out of range"),
    (validate.seed, (2**64,), r"seed \| 18446744073709551616 is out of range. Expected: an integer in \[0, 9223372036854775807\]"),
    (validate.seed, (-1,), r"seed \| -1 is out of range"),
])
def test_bad_values(check, args, match):
    with pytest.raises(DeltaDiTError, match=match):
        check(*args)


def test_good_values_convert():
    assert validate.integer("n", 3.0, 0) == 3 and validate.real("x", "2.5", 0, 3) == 2.5
    assert validate.fraction("budget", 1) == 1.0 and validate.seed(2**63 - 1) == 2**63 - 1


def test_output_png(tmp_path):
    assert validate.output_png("--out", tmp_path / "new" / "deeper" / "a.PNG") == tmp_path / "new" / "deeper" / "a.PNG"
    png = tmp_path / "old.png"
    png.write_bytes(validate.PNG_SIGNATURE + b"rest")
    assert validate.output_png("--out", png) == png  # an existing PNG may be replaced
    notes = tmp_path / "notes.png"
    notes.write_text("my notes")
    with pytest.raises(DeltaDiTError, match=r"--out \| '.*notes.png' exists and is not a PNG; it will not be overwritten"):
        validate.output_png("--out", notes)
    with pytest.raises(DeltaDiTError, match=r"--out \| 'cat.jpg' does not end in .png"):
        validate.output_png("--out", "cat.jpg")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(DeltaDiTError, match=r"--out \| '.*dir.png' is a folder"):
        validate.output_png("--out", tmp_path / "dir.png")
    with pytest.raises(DeltaDiTError, match=r"--out \| folder '.*notes.png/sub' cannot be created: '.*notes.png' is a file"):
        validate.output_png("--out", notes / "sub" / "a.png")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(DeltaDiTError, match=r"--out \| folder '.*locked' is not writable"):
            validate.output_png("--out", locked / "a.png")
