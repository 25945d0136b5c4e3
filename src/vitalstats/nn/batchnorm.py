"""BatchNorm1d/2d/3d: drop-in for torch.nn's, built on ``vitalstats.nn.functional``.

Same constructor arguments, defaults, parameters, buffers, ``state_dict`` keys and ``_version``
as torch 2.13, so ``load_state_dict`` works in both directions. Two additions:

* every training forward sets plain attributes ``batch_mean`` and ``batch_var`` (biased), the
  last batch's per-channel statistics: float32, detached, on the input's device, no host sync;
* ``skip_nonfinite=True`` (default): a training batch whose statistics hold a NaN/Inf leaves
  ``running_mean``/``running_var``/``num_batches_tracked`` unchanged and warns once naming the
  layer. torch's layers are poisoned for good by one such batch (common under mixed
  precision); ``skip_nonfinite=False`` gives torch's exact behaviour.

    >>> import torch, vitalstats as vs
    >>> bn = vs.nn.BatchNorm2d(16)
    >>> y = bn(torch.randn(8, 16, 5, 5))
    >>> bn.batch_mean.shape, bn.running_var.shape
    (torch.Size([16]), torch.Size([16]))
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import init
from torch.nn.parameter import Parameter

from vitalstats.nn import _batch_norm
from vitalstats.nn._batch_norm import (
    batch_norm_training,
    batch_norm_training_updated,
    kernel_update,
    restore_running_stats,
    variance_from_invstd,
)
from vitalstats.nn._errors import check_float_input, describe_shape
from vitalstats.nn._guard import DeferredFlagWarning
from vitalstats.nn.functional import (
    check_eps,
    check_values_per_channel,
    finite_variance,
    lerp_running_stats,
    normalize_with_running_stats,
)
from vitalstats.stats import native

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]

# input dtypes whose statistics torch's kernel computes in float32 for a float32 layer
# (bfloat16 also in bfloat16 for a bfloat16 layer)
_ROWS_INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class _NormBase(torch.nn.Module):
    """Parameters and running buffers shared by BatchNorm and InstanceNorm (torch's layout)."""

    _version = 2
    __constants__: ClassVar[list[str]] = [
        "track_running_stats",
        "momentum",
        "eps",
        "num_features",
        "affine",
    ]
    _expected_dims: tuple[int, ...] = ()
    _input_layout = ""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
        skip_nonfinite: bool = True,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.skip_nonfinite = skip_nonfinite
        self.layer_name: str | None = None  # set by swap_norm_layers; used in messages
        if affine:
            self.weight = Parameter(torch.empty(num_features, **factory_kwargs))
            if bias:
                self.bias = Parameter(torch.empty(num_features, **factory_kwargs))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory_kwargs))
            self.register_buffer("running_var", torch.ones(num_features, **factory_kwargs))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.batch_mean: Tensor | None = None
        self.batch_var: Tensor | None = None
        self._nonfinite_warning = DeferredFlagWarning()
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """running_mean = 0, running_var = 1, num_batches_tracked = 0."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Running statistics reset; weight = 1, bias = 0."""
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        version = local_metadata.get("version")
        if (version is None or version < 2) and self.track_running_stats:
            # version 2 added num_batches_tracked; older checkpoints load with 0
            key = prefix + "num_batches_tracked"
            if key not in state_dict:
                state_dict[key] = (
                    self.num_batches_tracked
                    if self.num_batches_tracked is not None
                    and self.num_batches_tracked.device != torch.device("meta")
                    else torch.tensor(0, dtype=torch.long)
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def layer_label(self) -> str:
        """How messages name this layer: its model path when known, else its repr head."""
        return self.layer_name or f"{type(self).__name__}({self.num_features})"

    def _check_input_dim(self, input: Tensor) -> None:
        if (
            input.is_floating_point()
            and input.dim() in self._expected_dims
            and input.shape[1] == self.num_features
        ):
            return
        label = self.layer_label()
        check_float_input(input, label, min_dims=1)
        if input.dim() not in self._expected_dims:
            raise ValueError(
                f"{label}: expected {self._input_layout} input, got {input.dim()}-D input of "
                f"shape {describe_shape(input)}. Fix: reshape the input, or use the layer "
                "made for this many dims (BatchNorm1d: 2-D/3-D, 2d: 4-D, 3d: 5-D)."
            )
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"{label}: expected {self.num_features} channels in dim 1 of the "
                f"{self._input_layout} input, got {input.shape[1]} (input of shape "
                f"{describe_shape(input)}). Fix: build the layer with num_features="
                f"{input.shape[1]}, or check the previous layer's output size."
            )

    def _exponential_average_factor(self) -> float | Tensor:
        """momentum, or 1 / (batches so far) for momentum=None: a tensor, no host sync."""
        if self.momentum is not None:
            return self.momentum
        if self.num_batches_tracked is None:
            return 0.0  # torch: no count, no update
        return (self.num_batches_tracked + 1).double().reciprocal()

    def _update_running_stats(self, batch_mean: Tensor, unbiased_var: Tensor) -> None:
        """Fold this batch into the running buffers (training with track_running_stats),
        unless ``skip_nonfinite`` and the batch statistics hold a NaN/Inf."""
        if native.vmap_batched(unbiased_var) and not native.vmap_batched(self.running_var):
            raise RuntimeError(
                f"{self.layer_label()}: batch norm got a batched tensor as input while the "
                "running_mean or running_var, which will be updated in place, were not batched "
                "(torch.func.vmap in training mode). Fix: use the layer in eval mode, build it "
                "with track_running_stats=False, or drop its running statistics "
                "(layer.running_mean = layer.running_var = layer.num_batches_tracked = None; "
                "layer.track_running_stats = False: what torch.func."
                "replace_all_batch_norm_modules_ does to torch.nn's layers; it does not "
                "recognise vs.nn's)."
            )
        factor = self._exponential_average_factor()
        if not self.skip_nonfinite:
            finite = None
        elif unbiased_var.device.type == "cpu":  # reading a CPU value costs no sync
            if not math.isfinite(unbiased_var.amax().item()):  # amax propagates NaN
                self._nonfinite_warning.warn_once(self._nonfinite_message)
                return
            finite = None
        else:
            finite = finite_variance(unbiased_var)
        lerp_running_stats(
            self.running_mean, self.running_var, batch_mean, unbiased_var, factor, finite
        )
        count = self.num_batches_tracked
        if count is None:
            return
        if finite is None:
            count.add_(1)
            return
        count.add_(finite)
        self._nonfinite_warning.record_unless(finite, self._nonfinite_message)

    def _kernel_momentum(self) -> float | None:
        """The momentum torch's kernel would be given, as a Python float: ``momentum``, or
        1 / (batches so far, this one included) for momentum=None with a CPU count (read
        without a sync); None where only the tensor path applies."""
        if self.momentum is not None:
            return self.momentum
        count = self.num_batches_tracked
        if count is None or count.device.type != "cpu":
            return None
        return 1.0 / (int(count) + 1)

    def _finish_kernel_update(
        self, mean: Tensor, invstd: Tensor, eps: float, previous: Tensor | None
    ) -> None:
        """After torch's kernel updated the running buffers in place (``kernel_update``):
        ``batch_var`` from its invstd, then the non-finite guard (the batch variance holds a
        NaN/Inf, as a NaN/Inf mean makes it: the buffers are restored from ``previous``, the
        batch is not counted, a warning once), else ``num_batches_tracked += 1``; read on the
        CPU, no sync. Publishes ``batch_mean``/``batch_var``."""
        buffers = self._buffers
        var, finite = variance_from_invstd(
            invstd, eps, previous is not None, buffers["num_batches_tracked"]
        )
        if not finite:
            restore_running_stats(buffers["running_mean"], buffers["running_var"], previous)
            self._nonfinite_warning.warn_once(self._nonfinite_message)
        self._publish_batch_statistics(mean, var)

    def _nonfinite_message(self) -> str:
        return (
            f"{self.layer_label()}: a training batch had non-finite (NaN/Inf) statistics; "
            "running_mean, running_var and num_batches_tracked were left unchanged (torch's "
            "BatchNorm would have been poisoned for good). Look for overflow in the layers "
            "before it or a too-large loss scale; pass skip_nonfinite=False for torch's exact "
            "behaviour. (Warned once per layer.)"
        )


class _BatchNorm(_NormBase):
    """BatchNorm over the channel dim 1 of (N, C, *) input; see the module docstring."""

    def _publish_batch_statistics(self, mean: Tensor, var: Tensor) -> None:
        """``batch_mean``/``batch_var``, float32: plain attributes (not buffers), set through
        __dict__ (skips Module.__setattr__'s bookkeeping)."""
        as_float = mean.dtype != torch.float32
        self.__dict__["batch_mean"] = mean.float() if as_float else mean
        self.__dict__["batch_var"] = var.float() if as_float else var

    def _rows_training_forward(self, x: Tensor) -> Tensor | None:
        """The common training step on the CPU, checked in a few microseconds: (N, C)
        contiguous input with running buffers, where torch's kernel computes the statistics
        (below the C row kernels' size): float32 or half precision into a float32 layer, or
        bfloat16 into a bfloat16 one. What runs is ``forward``'s torch-kernel branch
        (``kernel_update``, ``_finish_kernel_update``) without its general checks, so a layer
        call costs no more than torch's. None where any condition fails: ``forward``'s
        general path decides."""
        if torch.compiler.is_compiling():  # C calls on data pointers: not traceable
            return None
        if not (self.training and type(x) is Tensor and x.dim() == 2 and x.is_cpu):
            return None
        rows, channels = x.shape
        dtype = x.dtype
        if channels != self.num_features or rows < 2 or dtype not in _ROWS_INPUT_DTYPES:
            return None
        if dtype is torch.float32 and rows * channels >= _batch_norm._ROWS_MIN_VALUES:
            return None  # the C row kernels' size: forward decides
        eps, momentum, buffers = self.eps, self.momentum, self._buffers
        running_mean, running_var = buffers["running_mean"], buffers["running_var"]
        if running_mean is None or running_var is None or not self.track_running_stats:
            return None
        layer_dtype = running_mean.dtype  # the statistics' dtype, as torch's kernel picks it
        if not (layer_dtype is torch.float32 or layer_dtype is dtype is torch.bfloat16):
            return None
        if momentum is None:
            momentum = self._kernel_momentum()
            if momentum is None:
                return None
        parameters = self._parameters
        weight, bias = parameters["weight"], parameters["bias"]
        if not (
            eps > 0
            and x.is_contiguous()
            and running_var.dtype is layer_dtype
            and running_mean.is_cpu
            and running_var.is_cpu
            and (weight is None or weight.dtype is layer_dtype)
            and (bias is None or bias.dtype is layer_dtype)
        ):
            return None
        if native.functorch_wrapped(x):
            return None
        output, mean, invstd, previous = kernel_update(
            x, weight, bias, eps, running_mean, running_var, momentum, self.skip_nonfinite
        )
        self._finish_kernel_update(mean, invstd, eps, previous)
        return output

    def forward(self, input: Tensor) -> Tensor:
        output = self._rows_training_forward(input)
        if output is not None:
            return output
        self._check_input_dim(input)
        # each Module attribute read is a __getattr__ call: read them once
        running_mean, running_var, eps = self.running_mean, self.running_var, self.eps
        training = self.training
        use_batch_stats = training or (running_mean is None and running_var is None)
        if not (eps > 0 or (eps == 0 and not use_batch_stats)):
            check_eps(eps, self.layer_label(), use_batch_stats)
        weight, bias = self.weight, self.bias
        if not use_batch_stats:
            return normalize_with_running_stats(input, running_mean, running_var, weight, bias, eps)
        if input.numel() == 0:  # torch: empty output, buffers kept, the batch still counted
            if training and self.track_running_stats and self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
            return normalize_with_running_stats(
                input, input.new_zeros(self.num_features), input.new_ones(self.num_features),
                weight, bias, eps,
            )  # fmt: skip
        if input.numel() <= self.num_features:  # one value per channel
            check_values_per_channel(input, self.layer_label())
        if training and running_mean is not None and running_var is not None:
            momentum = self._kernel_momentum() if self.track_running_stats else None
            if momentum is not None:
                updated = batch_norm_training_updated(
                    input, weight, bias, eps, running_mean, running_var, momentum,
                    self.skip_nonfinite,
                )  # fmt: skip
                if updated is not None:  # torch's kernel updated the buffers in place
                    output, mean, invstd, previous = updated
                    self._finish_kernel_update(mean, invstd, eps, previous)
                    return output
        buffer_dtype = running_mean.dtype if running_mean is not None else None
        output, mean, var, unbiased = batch_norm_training(input, weight, bias, eps, buffer_dtype)
        if training:
            self._publish_batch_statistics(mean, var)
            if running_mean is not None and self.track_running_stats:
                self._update_running_stats(mean, unbiased)
        return output


class BatchNorm1d(_BatchNorm):
    """BatchNorm over (N, C) or (N, C, L) input: per-channel statistics over N (and L).

    y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias; Var biased in the normalisation,
    unbiased (n / (n - 1)) in the ``running_var`` update; eval uses the running statistics.
    """

    _expected_dims = (2, 3)
    _input_layout = "2-D (N, C) or 3-D (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """BatchNorm over (N, C, H, W): per-channel statistics over N, H, W (see BatchNorm1d).
    channels_last input gives channels_last output."""

    _expected_dims = (4,)
    _input_layout = "4-D (N, C, H, W)"


class BatchNorm3d(_BatchNorm):
    """BatchNorm over (N, C, D, H, W): per-channel statistics over N, D, H, W."""

    _expected_dims = (5,)
    _input_layout = "5-D (N, C, D, H, W)"
