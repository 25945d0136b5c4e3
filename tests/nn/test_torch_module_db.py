"""Drop-in means torch's own tests pass: every sample of PyTorch's ``module_db`` entry for each
torch twin, run against the vitalstats class (see ``tests/nn/_module_db.py`` for the checks).

The Lazy variants have no module_db entry of their own; they run their eager twin's samples with
the lazy constructor arguments (num_features left out), as torch's InstanceNorm inputs do.
"""

from __future__ import annotations

import pytest
import torch

common_modules = pytest.importorskip(
    "torch.testing._internal.common_modules", reason="module_db needs expecttest (dev extras)"
)

import vitalstats as vs  # noqa: E402
from tests.nn._module_db import Twin, run_error_sample, run_sample  # noqa: E402


def _ours(name: str):
    return lambda: getattr(vs.nn, name)


TWINS = [
    Twin(torch.nn.BatchNorm1d, "nn.BatchNorm1d", _ours("BatchNorm1d")),
    Twin(torch.nn.BatchNorm2d, "nn.BatchNorm2d", _ours("BatchNorm2d")),
    Twin(torch.nn.BatchNorm3d, "nn.BatchNorm3d", _ours("BatchNorm3d")),
    Twin(torch.nn.LazyBatchNorm1d, "nn.BatchNorm1d", _ours("LazyBatchNorm1d"), lazy=True),
    Twin(torch.nn.LazyBatchNorm2d, "nn.BatchNorm2d", _ours("LazyBatchNorm2d"), lazy=True),
    Twin(torch.nn.LazyBatchNorm3d, "nn.BatchNorm3d", _ours("LazyBatchNorm3d"), lazy=True),
    Twin(torch.nn.GroupNorm, "nn.GroupNorm", _ours("GroupNorm")),
    Twin(torch.nn.InstanceNorm1d, "nn.InstanceNorm1d", _ours("InstanceNorm1d")),
    Twin(torch.nn.InstanceNorm2d, "nn.InstanceNorm2d", _ours("InstanceNorm2d")),
    Twin(torch.nn.InstanceNorm3d, "nn.InstanceNorm3d", _ours("InstanceNorm3d")),
    Twin(torch.nn.LazyInstanceNorm1d, "nn.InstanceNorm1d", _ours("LazyInstanceNorm1d"), lazy=True),
    Twin(torch.nn.LazyInstanceNorm2d, "nn.InstanceNorm2d", _ours("LazyInstanceNorm2d"), lazy=True),
    Twin(torch.nn.LazyInstanceNorm3d, "nn.InstanceNorm3d", _ours("LazyInstanceNorm3d"), lazy=True),
    Twin(torch.nn.LayerNorm, "nn.LayerNorm", _ours("LayerNorm")),
    Twin(torch.nn.RMSNorm, "nn.RMSNorm", _ours("RMSNorm")),
]
INFOS = {info.name: info for info in common_modules.module_db}


def _modes(info) -> list[bool]:
    return [True, False] if info.train_and_eval_differ else [True]


def _samples(twin: Twin, info, dtype: torch.dtype, training: bool, errors: bool = False) -> list:
    torch.manual_seed(0)  # make_tensor draws from the global generator
    func = info.module_error_inputs_func if errors else info.module_inputs_func
    if func is None:
        return []
    kwargs = {"lazy": True} if twin.lazy and "InstanceNorm" in twin.entry else {}
    return func(
        info, device="cpu", dtype=dtype, requires_grad=not errors, training=training, **kwargs
    )


def _cases(errors: bool) -> list:
    cases = []
    for twin in TWINS:
        info = INFOS[twin.entry]
        dtypes = [torch.float32] if errors else info.dtypes
        for dtype in dtypes:
            for training in [True, False] if errors else _modes(info):
                for index, sample in enumerate(_samples(twin, info, dtype, training, errors)):
                    desc = getattr(sample, "desc", "") or getattr(
                        getattr(sample, "module_error_input", None), "desc", ""
                    )
                    name = f"{twin.torch_cls.__name__}-{str(dtype)[6:]}-"
                    name += f"{'train' if training else 'eval'}-{index}{'-' + desc if desc else ''}"
                    cases.append(pytest.param(twin, info, dtype, training, index, id=name))
    return cases


@pytest.mark.parametrize(("twin", "info", "dtype", "training", "index"), _cases(errors=False))
def test_module_db_sample_matches_torch(twin, info, dtype, training, index) -> None:
    sample = _samples(twin, info, dtype, training)[index]
    run_sample(twin, info, sample, dtype, training, seed=index)


@pytest.mark.parametrize(("twin", "info", "dtype", "training", "index"), _cases(errors=True))
def test_module_db_error_input_raises_like_torch(twin, info, dtype, training, index) -> None:
    error_input = _samples(twin, info, dtype, training, errors=True)[index]
    run_error_sample(
        twin, error_input, dtype, training, common_modules.ModuleErrorEnum.CONSTRUCTION_ERROR
    )
