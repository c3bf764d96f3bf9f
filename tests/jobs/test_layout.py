"""The declared model: built at packing as a silo builds it, written as MODEL.json, signed."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fedsilo.errors import ConfigError
from fedsilo.jobs import (
    MODEL_NAME,
    Hyperparameters,
    ModelLayout,
    TensorLayout,
    declare_model,
    pack_bundle,
    unpack_bundle,
)

TASK = """
from torch import nn


def model(ctx):
    width = int(ctx.hyperparameters.extra.get("width", 8))
    return nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.Linear(width, 2))


def train(model, ctx):
    return {"num_samples": 1}


def evaluate(model, ctx):
    return {"num_samples": 1}
"""


def _task(folder: Path, source: str = TASK) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task.py").write_text(textwrap.dedent(source))
    return folder


def test_the_declared_model_is_the_model_a_silo_builds(tmp_path: Path) -> None:
    from fedsilo.task import SiloRunner, load_task

    code = _task(tmp_path / "code")
    hp = Hyperparameters(seed=3, extra={"width": 16})
    declared = declare_model(code, "task", hp)
    runner = SiloRunner(
        load_task(code, "task"),
        silo="silo-a",
        inputs={},
        work_dir=tmp_path / "work",
        hyperparameters=hp,
    )
    built = runner.build()
    assert declared == ModelLayout.of(built)
    assert [t.name for t in declared.tensors] == list(built)
    assert declared.parameters == sum(int(a.size) for a in built.values())
    assert declared.bytes == sum(int(a.nbytes) for a in built.values())
    tracked = declared.tensor("1.num_batches_tracked")
    assert tracked is not None and tracked.dtype == "int64" and tracked.shape == ()
    # the hyperparameters shape the model, as they do in the silo
    assert declare_model(code, "task", Hyperparameters(extra={"width": 4})).parameters < (
        declared.parameters
    )


def test_a_model_built_under_local_dp_is_declared_as_the_silo_builds_it(tmp_path: Path) -> None:
    """A task may build another model under local DP (ctx.privacy set: an LSTM becomes
    Opacus's DPLSTM, with other tensor names); the declaration follows the job's privacy."""
    code = _task(
        tmp_path / "code",
        TASK.replace(
            'width = int(ctx.hyperparameters.extra.get("width", 8))',
            "width = 6 if ctx.privacy is not None else 8",
        ),
    )
    privacy = {"local": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}
    plain = declare_model(code, "task", Hyperparameters())
    private = declare_model(code, "task", Hyperparameters(), privacy=privacy, rounds=2)
    assert plain.tensor("0.weight").shape == (8, 4)
    assert private.tensor("0.weight").shape == (6, 4)


def test_a_bundle_carries_the_declared_model_under_its_manifest(tmp_path: Path) -> None:
    code = _task(tmp_path / "code")
    (code / MODEL_NAME).write_text("a file of the folder, which the declaration replaces")
    layout = declare_model(code, "task", Hyperparameters())
    data, manifest = pack_bundle(code, model=layout)
    assert MODEL_NAME in manifest.files
    unpacked = tmp_path / "out"
    unpack_bundle(data, unpacked)
    assert ModelLayout.model_validate_json((unpacked / MODEL_NAME).read_bytes()) == layout
    # the same code and model pack to the same bytes; another model changes the identity
    assert pack_bundle(code, model=layout) == (data, manifest)
    other = declare_model(code, "task", Hyperparameters(extra={"width": 3}))
    assert pack_bundle(code, model=other)[1].digest != manifest.digest
    # one tensor a line, so that the diff of two declarations reads well
    text = (unpacked / MODEL_NAME).read_text()
    assert '{"name": "0.weight", "shape": [8, 4], "dtype": "float32"}' in text.splitlines()[1]


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (
            "def train(m, ctx): ...\ndef evaluate(m, ctx): ...\n",
            "the task module must define model(...)",
        ),
        (
            """
            def model(ctx):
                raise ValueError("no width given")
            def train(m, ctx): ...
            def evaluate(m, ctx): ...
            """,
            "ValueError: no width given (at task.py line 3)",
        ),
        (
            """
            import numpy as np
            def model(ctx):
                return np.load(ctx.input("train"))
            def train(m, ctx): ...
            def evaluate(m, ctx): ...
            """,
            "no inputs",
        ),
        (
            """
            def model(ctx):
                return None
            def train(m, ctx): ...
            def evaluate(m, ctx): ...
            """,
            "model() must return a torch.nn.Module",
        ),
        ("import no_such_module_anywhere\n", "No module named 'no_such_module_anywhere'"),
    ],
)
def test_a_model_that_cannot_be_built_stops_packing_naming_the_file(
    tmp_path: Path, source: str, words: str
) -> None:
    code = _task(tmp_path / "code", source)
    with pytest.raises(ConfigError) as caught:
        declare_model(code, "task", Hyperparameters())
    assert caught.value.file is not None and caught.value.file.endswith("task.py")
    assert words in str(caught.value)


def test_a_layout_whose_totals_disagree_with_its_tensors_is_refused() -> None:
    tensor = TensorLayout(name="w", shape=(2, 3), dtype="float32")
    assert tensor.values == 6 and tensor.bytes == 24
    with pytest.raises(ValueError, match="not the sums over the tensors"):
        ModelLayout(tensors=(tensor,), parameters=6, bytes=4)
    with pytest.raises(ValueError, match="listed twice"):
        ModelLayout(tensors=(tensor, tensor), parameters=12, bytes=48)
    with pytest.raises(ValueError, match="dtype 'object'"):
        TensorLayout(name="w", shape=(1,), dtype="object")
    layout = ModelLayout.of({"w": np.zeros((2, 3), np.float32), "n": np.zeros((), np.int64)})
    assert (layout.parameters, layout.bytes) == (7, 32)
    assert json.loads(layout.canonical())["parameters"] == 7
