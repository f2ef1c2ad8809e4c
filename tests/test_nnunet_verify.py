"""nnU-Net's own ``verify_dataset_integrity`` accepts our export (real + synthetic cases).

``make test`` installs the checker (``requirements-nnunet.txt``, without its dependencies, which would
replace the CPU torch build); the test skips where nnunetv2 is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import write_tiny_dataset, write_tiny_manifest

from segsynth.data.nnunet import export_nnunet


@pytest.mark.slow
def test_nnunet_accepts_our_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(tmp_path / var))
    verify = pytest.importorskip("nnunetv2.experiment_planning.verify_dataset_integrity")
    real = write_tiny_dataset(tmp_path / "real", cases=("p1", "p2"), labels=("background", "a", "b"))
    synth = write_tiny_dataset(tmp_path / "synth", cases=("s1",), labels=("background", "a", "b"), seed=1)
    write_tiny_manifest(synth, {"s1_0": "p1_0", "s1_1": None})
    out = tmp_path / "nnUNet_raw" / "Dataset777_Tiny"
    export_nnunet(synth, out, merge_real=real, num_folds=2)
    assert os.listdir(out / "imagesTr") and (out / "splits_final.json").is_file()
    verify.verify_dataset_integrity(str(out), 1)  # raises (AssertionError/RuntimeError) on any problem
