"""SyncBatchNorm: BatchNorm whose batch statistics span every rank of a process group.

Each rank reduces its batch to a count ``n_r`` and per-channel ``mean_r`` and ``M2_r`` (sum of
squared deviations, from the two-pass statistics of ``_batch_norm.batch_statistics``); one
``all_gather`` shares them and every rank merges them exactly with the project's Chan merge
(``vitalstats.stats.chan_merge``, pairwise in rank order), so batch sizes may differ and a
batch may be empty:

    N = sum_r n_r,   mean = sum_r n_r mean_r / N,   M2 = sum_r M2_r + sum_r n_r (mean_r - mean)^2

The output ``(x - mean) / sqrt(M2 / N + eps) * weight + bias`` is what one process computes on
the concatenated batches. Backward is BatchNorm's formula (``_batch_norm.batch_norm_backward``)
with its two per-channel sums ``sum(dy)`` and ``sum(dy * x_hat)`` all-reduced over the group;
weight and bias gradients stay local (DDP adds them up). Unlike ``torch.nn.SyncBatchNorm``
(GPU/XPU only) this runs on gloo/CPU as well as NCCL/CUDA.
"""

from __future__ import annotations

import datetime
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from vitalstats.nn._batch_norm import (
    batch_norm_backward,
    batch_norm_gradient_sums,
    batch_statistics,
    normalize,
)
from vitalstats.nn._errors import check_float_input, describe_shape
from vitalstats.nn._layout import compute_dtype
from vitalstats.nn.batchnorm import _BatchNorm
from vitalstats.stats.merge import chan_merge

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]

Timeout = float | datetime.timedelta | None


class _Collectives:
    """The two collectives SyncBatchNorm needs, with errors that name the layer.

    ``timeout`` (seconds or a timedelta) bounds each wait through ``Work.wait(timeout)``;
    without it the process group's own timeout applies (``init_process_group(timeout=...)``).
    Under NCCL, ``Work.wait(timeout)`` blocks the CPU until the GPU has finished the
    collective (torch's documented behaviour), a host sync per layer and step; without a
    timeout the wait is a stream dependency and the CPU runs ahead.
    """

    def __init__(self, group: Any, world_size: int, timeout: Timeout, layer: str) -> None:
        self.group, self.world_size, self.layer = group, world_size, layer
        if isinstance(timeout, (int, float)):
            timeout = datetime.timedelta(seconds=float(timeout))
        self.timeout = timeout

    def _run(self, what: str, launch: Any) -> None:
        try:
            work = launch(self.timeout is not None)
            if self.timeout is not None:
                work.wait(self.timeout)
        except RuntimeError as err:
            rank = dist.get_rank(self.group)
            raise RuntimeError(
                f"{self.layer} (rank {rank} of {self.world_size}): the {what} did not complete: "
                f"{str(err).strip()}. Every rank of the process group must run this layer in "
                "training mode the same number of times per step; a rank that skips a step, "
                "stops early or runs a different model leaves its peers waiting. Check for "
                "rank-dependent control flow or uneven data (e.g. use a DistributedSampler "
                "with drop_last=True), or pass timeout=seconds to fail sooner."
            ) from err

    def all_gather(self, payload: Tensor, what: str) -> Tensor:
        """(world_size, *payload.shape): every rank's payload, in rank order."""
        parts = [torch.empty_like(payload) for _ in range(self.world_size)]
        self._run(
            what, lambda async_op: dist.all_gather(parts, payload, self.group, async_op=async_op)
        )
        return torch.stack(parts)

    def all_reduce_sum(self, tensor: Tensor, what: str) -> Tensor:
        self._run(
            what, lambda async_op: dist.all_reduce(tensor, group=self.group, async_op=async_op)
        )
        return tensor


def local_moments(x: Tensor) -> Tensor:
    """(2C + 1,) float64 ``[n, mean_1..mean_C, M2_1..M2_C]`` of an (N, C, *) input.

    ``n`` counts the values per channel (N times the spatial size); an empty batch gives zeros.
    mean and the biased variance come from BatchNorm's two-pass statistics (never
    E[x^2] - E[x]^2), and M2 = n * var.
    """
    channels = x.shape[1]
    count = x.numel() // channels
    if count == 0:
        return torch.zeros(2 * channels + 1, dtype=torch.float64, device=x.device)
    mean, var = batch_statistics(x.detach())
    n = torch.full((1,), float(count), dtype=torch.float64, device=x.device)
    return torch.cat([n, mean.double(), var.double() * count])


def merge_moments(gathered: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Exact merge of (R, 2C + 1) per-rank moments into (N, mean, biased var) by
    ``chan_merge``, pairwise: rank 2i with 2i + 1, then the results, log2(R) rounds.

    N has shape (1,); mean and var (C,), float64. Ranks with n = 0 contribute nothing; when the
    whole group is empty, mean and var are 0 (the caller leaves running statistics alone).
    """
    channels = (gathered.shape[1] - 1) // 2
    count = gathered[:, :1].round().long()  # (R, 1)
    mean, m2 = gathered[:, 1 : 1 + channels], gathered[:, 1 + channels :]  # (R, C) each
    while count.shape[0] > 1:
        if count.shape[0] % 2:  # an empty summary pairs with the last rank
            count = torch.cat([count, torch.zeros_like(count[:1])])
            mean = torch.cat([mean, torch.zeros_like(mean[:1])])
            m2 = torch.cat([m2, torch.zeros_like(m2[:1])])
        count, mean, m2 = chan_merge(
            count[0::2], mean[0::2], m2[0::2], count[1::2], mean[1::2], m2[1::2]
        )
    total = count[0].double()
    return total, mean[0], m2[0] / total.clamp(min=1.0)


class SyncBatchNormFunction(torch.autograd.Function):
    """y = (x - mean) * invstd * weight + bias with mean/var over all ranks' batches.

    Returns (y, mean, biased var, N) where mean, var are float64 (C,) and N is the (1,) count
    of values per channel over the whole group.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        collectives: _Collectives,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        gathered = collectives.all_gather(local_moments(x), "forward all_gather of batch moments")
        total, mean64, var64 = merge_moments(gathered)
        dtype = compute_dtype(x.dtype)
        mean, var = mean64.to(dtype), var64.to(dtype)
        invstd = torch.rsqrt(var64 + eps).to(dtype)
        weight_c = weight.to(dtype) if weight is not None else None
        bias_c = bias.to(dtype) if bias is not None else None
        y = normalize(x, mean, var, weight_c, bias_c, eps)
        ctx.save_for_backward(x, weight, mean, invstd, total)
        ctx.eps = eps
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.collectives = collectives
        ctx.mark_non_differentiable(mean64, var64, total)
        return y, mean64, var64, total

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor, *_unused: Any) -> tuple:
        """``batch_norm_backward`` with group-wide sums:

        dx = k * (dy - sum(dy) / N - xhat * sum(dy * xhat) / N),   k = weight * invstd
        dweight = sum_local(dy * xhat),  dbias = sum_local(dy)   (DDP adds the ranks)
        """
        x, weight, mean, invstd, total = ctx.saved_tensors
        sum_dy, sum_dy_xhat = batch_norm_gradient_sums(grad_out, x, mean, invstd, ctx.eps)
        grad_input = grad_weight = grad_bias = None
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = sum_dy_xhat.to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_bias = sum_dy.to(ctx.bias_dtype)
        if ctx.needs_input_grad[0]:
            sums = ctx.collectives.all_reduce_sum(
                torch.cat([sum_dy, sum_dy_xhat]), "backward all_reduce of gradient sums"
            )
            group_sum_dy, group_sum_dy_xhat = sums.chunk(2)
            weight_c = weight.to(mean.dtype) if weight is not None else None
            count = total.to(mean.dtype)
            grad_input = batch_norm_backward(
                grad_out.to(mean.dtype), x.to(mean.dtype), weight_c, mean, invstd,
                group_sum_dy, group_sum_dy_xhat, count,
            ).to(x.dtype)  # fmt: skip
        return grad_input, grad_weight, grad_bias, None, None


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over (N, C, *) input with statistics over all ranks of ``process_group``.

    Same arguments, defaults and ``state_dict`` as ``torch.nn.SyncBatchNorm``. In training in
    a group of two or more ranks the per-channel mean and biased variance are those of all
    ranks' batches together, and every rank updates its running statistics identically with
    them (unbiased variance, PyTorch momentum convention); ``batch_mean``/``batch_var`` hold
    the group's statistics. Otherwise -- no process group, a group of one, ``eval()`` -- it
    is vitalstats' plain BatchNorm and runs no collective.

    Beyond torch:
    * ``timeout`` (seconds or timedelta) bounds every collective wait, so a rank that skips
      the layer makes its peers raise an error naming the layer instead of hanging (without
      it the process group's ``init_process_group(timeout=...)`` applies). Under NCCL it
      makes each collective block the CPU until the GPU is done: on GPUs prefer the process
      group's timeout;
    * ``layer_name`` (set by ``convert_sync_batchnorm`` to the qualified name) names the
      layer in errors; channel counts are compared across ranks on the first synchronised
      step, so a mismatch raises on every rank with each rank's count;
    * ``skip_nonfinite`` as in ``vs.nn.BatchNorm2d``: a batch with NaN/Inf group statistics,
      or a group holding a single value per channel (unbiased variance undefined; torch writes
      NaN there), leaves the running statistics and ``num_batches_tracked`` unchanged.

        >>> bn = vs.nn.SyncBatchNorm(16)            # or vs.nn.convert_sync_batchnorm(model)
        >>> y = bn(torch.randn(8, 16, 4, 4))        # one process: plain BatchNorm
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        timeout: Timeout = None,
        skip_nonfinite: bool = True,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device=device,
            dtype=dtype,
            bias=bias,
            skip_nonfinite=skip_nonfinite,
        )
        self.process_group = process_group
        self.timeout = timeout
        self._channels_checked_for: tuple[int, int] | None = None

    def _check_input_dim(self, input: Tensor) -> None:
        label = self.layer_label()
        check_float_input(input, label, min_dims=2)
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"{label}: expected {self.num_features} channels in dim 1 of the (N, C, *) "
                f"input, got {input.shape[1]} (input of shape {describe_shape(input)}). Fix: "
                f"build the layer with num_features={input.shape[1]}, or check the previous "
                "layer's output size."
            )

    def _collectives(self) -> _Collectives | None:
        """The group to synchronise over, or None when this step is plain BatchNorm."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        world_size = dist.get_world_size(group)
        if world_size <= 1:  # a group of one, or a rank outside ``process_group`` (-1)
            return None
        return _Collectives(group, world_size, self.timeout, self.layer_label())

    def forward(self, input: Tensor) -> Tensor:
        collectives = self._collectives()
        if collectives is None:
            return super().forward(input)
        check_float_input(input, self.layer_label(), min_dims=2)
        self._check_channels_across_ranks(input, collectives)
        self._check_input_dim(input)
        y, mean, var, total = SyncBatchNormFunction.apply(
            input, self.weight, self.bias, self.eps, collectives
        )
        self.__dict__["batch_mean"], self.__dict__["batch_var"] = mean.float(), var.float()
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():  # the group's unbiased variance; N <= 1 gives NaN: skipped
                unbiased = torch.where(total > 1, var * total / (total - 1), torch.nan)
                self._update_running_stats(mean, unbiased)
        return y

    def _check_channels_across_ranks(self, input: Tensor, collectives: _Collectives) -> None:
        """Once per process group: every rank must feed this layer the same channel count
        (a size mismatch inside a gloo all_gather aborts the process)."""
        key = (id(collectives.group), collectives.world_size)
        if self._channels_checked_for == key:
            return
        mine = torch.tensor([self.num_features, input.shape[1]], device=input.device)
        every = collectives.all_gather(mine, "all_gather of channel counts").tolist()
        if any(row != every[0] for row in every):
            per_rank = ", ".join(
                f"rank {rank}: num_features={features}, input channels={channels}"
                for rank, (features, channels) in enumerate(every)
            )
            raise ValueError(
                f"{self.layer_label()}: channel counts differ across the "
                f"{collectives.world_size} ranks of the process group ({per_rank}). Fix: every "
                "rank must build the same model and call its SyncBatchNorm layers in the same "
                "order with inputs of the same channel count."
            )
        self._channels_checked_for = key

    @classmethod
    def convert_sync_batchnorm(
        cls, module: torch.nn.Module, process_group: Any | None = None, *, timeout: Timeout = None
    ) -> torch.nn.Module:
        """Same as ``vs.nn.convert_sync_batchnorm``."""
        return convert_sync_batchnorm(module, process_group, timeout=timeout)


def _is_plain_batchnorm(module: torch.nn.Module) -> bool:
    """torch's BatchNorm*d/SyncBatchNorm (as torch converts them) and vitalstats' BatchNorm*d
    and SyncBatchNorm; not subclasses with their own forward (e.g. a BatchRenorm)."""
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return True
    return isinstance(module, _BatchNorm) and type(module).forward in (
        _BatchNorm.forward,
        SyncBatchNorm.forward,
    )


def _convert_one(
    module: torch.nn.Module, process_group: Any | None, timeout: Timeout, name: str
) -> SyncBatchNorm:
    """A SyncBatchNorm sharing ``module``'s parameters and buffers."""
    if isinstance(getattr(module, "weight", None), torch.nn.parameter.UninitializedParameter) or (
        isinstance(getattr(module, "running_mean", None), torch.nn.parameter.UninitializedBuffer)
    ):
        raise ValueError(
            f"convert_sync_batchnorm: {name or 'the module'} ({type(module).__name__}) is a lazy "
            "BatchNorm that has not seen an input yet, so its num_features is unknown. Fix: run "
            "one forward pass (e.g. on a dummy batch) before converting."
        )
    sync = SyncBatchNorm(
        module.num_features,
        module.eps,
        module.momentum,
        module.affine,
        module.track_running_stats,
        process_group,
        bias=module.bias is not None,
        timeout=timeout,
        skip_nonfinite=getattr(module, "skip_nonfinite", True),
    )
    if module.affine:
        sync.weight = module.weight
        sync.bias = module.bias
    sync.running_mean = module.running_mean
    sync.running_var = module.running_var
    sync.num_batches_tracked = module.num_batches_tracked
    sync.training = module.training
    sync.layer_name = name or getattr(module, "layer_name", None)
    if hasattr(module, "qconfig"):
        sync.qconfig = module.qconfig
    return sync


def convert_sync_batchnorm(
    module: torch.nn.Module, process_group: Any | None = None, *, timeout: Timeout = None
) -> torch.nn.Module:
    """Replace every BatchNorm1d/2d/3d (torch's, vitalstats', and torch's SyncBatchNorm) in
    ``module`` by a vitalstats ``SyncBatchNorm`` that shares its parameters and buffers.

    Returns ``module`` itself with its children replaced, or a new SyncBatchNorm when
    ``module`` is itself a BatchNorm. Each converted layer gets ``layer_name`` = its qualified
    name, so errors name it. Convert before wrapping the model in DistributedDataParallel:

        >>> ddp = torch.nn.parallel.DistributedDataParallel(vs.nn.convert_sync_batchnorm(model))
    """

    def convert(module: torch.nn.Module, name: str) -> torch.nn.Module:
        output = module
        if _is_plain_batchnorm(module):
            output = _convert_one(module, process_group, timeout, name)
        for child_name, child in module.named_children():
            qualified = f"{name}.{child_name}" if name else child_name
            output.add_module(child_name, convert(child, qualified))
        return output

    return convert(module, "")
