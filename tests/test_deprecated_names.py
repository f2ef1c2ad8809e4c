"""Every renamed public name and moved package still works under its old spelling for one release:
it warns with a ``DeprecationWarning`` and is the very object of its new name, not a copy."""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

import pytest

#: (module, old attribute, new attribute) of the names renamed in place.
RENAMED_NAMES = [
    ("segsynth", "BackboneTrainConfig", "ControlNetTrainConfig"),
    ("segsynth.controlnet", "BackboneTrainConfig", "ControlNetTrainConfig"),
    ("segsynth.controlnet.config", "BackboneTrainConfig", "ControlNetTrainConfig"),
    ("segsynth.diffusion.config", "TrainConfig", "DiffusionTrainSection"),
    ("segsynth.seg.config", "TrainConfig", "SegTrainSection"),
    ("segsynth.seg", "SyntheticSet", "SyntheticTrainingSet"),
    ("segsynth.seg.mixing", "SyntheticSet", "SyntheticTrainingSet"),
    ("segsynth.evaluation.sets", "SyntheticSet", "SyntheticArrays"),
    ("segsynth.synth", "GenerationRecord", "GenerationRecipe"),
    ("segsynth.synth.config", "GenerationRecord", "GenerationRecipe"),
]

#: (old package, new package, the submodules an old dotted import may name).
MOVED_PACKAGES = [
    ("segsynth.backbone", "segsynth.controlnet", ("config", "hint", "load", "prompts", "sample", "train")),
    ("segsynth.latent", "segsynth.autoencoder", ("autoencoder", "cache", "config", "train")),
]


def forget(package: str) -> None:
    """Drop an old package and its aliased submodules from ``sys.modules``, so the next import runs
    (and warns) again; the new package's modules stay loaded."""
    for name in [name for name in sys.modules if name == package or name.startswith(package + ".")]:
        del sys.modules[name]


@pytest.mark.parametrize(("module", "old", "new"), RENAMED_NAMES, ids=lambda value: str(value))
def test_an_old_name_warns_every_time_and_is_the_new_object(module: str, old: str, new: str) -> None:
    namespace = importlib.import_module(module)
    for _ in range(2):  # the old name is never cached on the module, so a second use warns too
        with pytest.warns(DeprecationWarning, match=f"{old} is renamed .*{new}"):
            value = getattr(namespace, old)
        assert value is getattr(namespace, new)
    assert old not in vars(namespace)


@pytest.mark.parametrize(("old", "new", "submodules"), MOVED_PACKAGES, ids=lambda value: str(value))
def test_an_old_package_path_warns_and_holds_the_new_modules(old: str, new: str, submodules: tuple[str, ...]) -> None:
    for sub in submodules:
        forget(old)
        with pytest.warns(DeprecationWarning, match=f"package {old} is renamed {new}"):
            module = importlib.import_module(f"{old}.{sub}")
        assert module is importlib.import_module(f"{new}.{sub}")
    forget(old)
    with pytest.warns(DeprecationWarning, match=f"package {old} is renamed {new}"):
        shim = importlib.import_module(old)
    package = importlib.import_module(new)
    assert package.__all__
    for name in package.__all__:
        assert getattr(shim, name) is getattr(package, name), name


def test_an_old_name_of_a_moved_package_reaches_the_new_object() -> None:
    forget("segsynth.backbone")
    with pytest.warns(DeprecationWarning):
        from segsynth.backbone import BackboneTrainConfig
        from segsynth.backbone.config import BackboneTrainConfig as from_module
    from segsynth.controlnet import ControlNetTrainConfig

    assert BackboneTrainConfig is from_module is ControlNetTrainConfig


def test_the_names_that_were_one_are_now_two() -> None:
    from segsynth.artifacts.schemas import GenerationRecord
    from segsynth.evaluation.sets import SyntheticArrays
    from segsynth.seg.synthetic_sets import SyntheticTrainingSet
    from segsynth.synth.config import GenerationRecipe

    assert SyntheticArrays is not SyntheticTrainingSet
    assert GenerationRecipe is not GenerationRecord


def test_the_public_api_names_the_new_spelling() -> None:
    import segsynth

    assert segsynth._EXPORTS["ControlNetTrainConfig"] == "segsynth.controlnet"
    assert "BackboneTrainConfig" not in segsynth._EXPORTS
    for name, module in segsynth._EXPORTS.items():
        assert not module.startswith(("segsynth.backbone", "segsynth.latent")), (name, module)


def test_the_former_out_config_order_still_works_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``train_seg`` and ``run_benchmark`` take ``(data, config, out)``; a call in the former order
    ``(data, out, config)`` is recognised by what the values are, swapped, and warned about."""
    from segsynth.benchmark import BenchmarkConfig
    from segsynth.renamed import _old_config_out_order
    from segsynth.seg.config import SegTrainConfig

    cfg, out = SegTrainConfig(), tmp_path / "run"
    assert not _old_config_out_order(cfg, out) and not _old_config_out_order(None, out)
    assert not _old_config_out_order(tmp_path / "seg.yaml", out)
    assert _old_config_out_order(out, cfg) and _old_config_out_order(out, None)
    assert _old_config_out_order(out, tmp_path / "seg.yml")

    import segsynth.benchmark.run as bench_run
    seen: list[tuple[object, object]] = []
    monkeypatch.setattr(bench_run, "prepare_benchmark", lambda data, out, config, **_: seen.append((config, out)) or 1 / 0)
    bench = BenchmarkConfig()
    with pytest.warns(DeprecationWarning, match=r"run_benchmark\(data, config, out\)"), pytest.raises(ZeroDivisionError):
        bench_run.run_benchmark(tmp_path / "data", tmp_path / "bench", bench)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with pytest.raises(ZeroDivisionError):
            bench_run.run_benchmark(tmp_path / "data", bench, tmp_path / "bench2")
    assert seen == [(bench, tmp_path / "bench"), (bench, tmp_path / "bench2")]
    with pytest.raises(TypeError, match="needs the output folder"):
        bench_run.run_benchmark(tmp_path / "data", bench)
