"""Probes on layer inputs and outputs: what is measured on activations and output gradients.

Each function takes a detached tensor and returns ``(field, value, rule)`` entries for the
``StepAccumulator`` (see ``recorder``): device tensors only, never a host read, no
data-dependent Python branch (so they trace into a ``torch.compile`` graph unbroken). The
hooks decide *when* they run; ``metrics`` turns the flushed values into named metrics.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vitalstats.monitor.recorder import Entry
from vitalstats.stats import native
from vitalstats.stats.kernels import native_kernels, summary_kernel
from vitalstats.stats.summary import as_raw
from vitalstats.stats.workspace import work_like

_RELU_FAMILY = (nn.ReLU, nn.ReLU6)  # outputs >= 0 and exactly 0 for negative input
_TANH_LIKE = (nn.Tanh, nn.Hardtanh, nn.Softsign)  # saturate at +-1
_SIGMOID_LIKE = (nn.Sigmoid, nn.Hardsigmoid)  # saturate at 0 and 1
_WEIGHTED = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, nn.Embedding)
_WEIGHTED_NAMES = ("Conv1D",)  # transformers.pytorch_utils.Conv1D (GPT-2): a Linear, transposed
_EMBEDDING = (nn.Embedding, nn.EmbeddingBag)

# Raw fields the probes record (metrics.py turns them into the registry's metrics).
ACT = "act"  # (7,) raw summary of the output
ACT_SATURATED = "act_saturated"  # count of values in the flat tails
ACT_ALIVE = "act_alive"  # (units,) 1.0 where a ReLU unit was positive somewhere in the step
OUT_GRAD = "out_grad"  # (7,) raw summary of d loss / d output
NONFINITE = "nonfinite"  # float32 sum of the output: NaN/Inf iff the output holds NaN/Inf
ACT_HIST, GRAD_HIST = "act_hist", "grad_hist"
INPUT_SAMPLE_SUMS = "input_sample_sums"  # per-sample sums of the model input
INPUT_SUM = "input_sum"
INPUT_FEATURES = "input_features"  # (F, 7) per-feature raw summaries of the model input

# Layers that cannot turn finite input into NaN/Inf: the per-step NaN sentinel skips them
# (a NaN passing through one is caught at the layer that created it or the next checked one).
_CANNOT_CREATE_NONFINITE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.Tanh, nn.Sigmoid, nn.Hardtanh,
    nn.Hardsigmoid, nn.Hardswish, nn.Softsign, nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.CELU,
    nn.SELU, nn.Identity, nn.Flatten, nn.Unflatten, nn.modules.dropout._DropoutNd,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
)  # fmt: skip


def can_create_nonfinite(module: nn.Module) -> bool:
    """False for bounded or finite-preserving elementwise layers, pooling and reshaping
    (finite in -> finite out)."""
    return not isinstance(module, _CANNOT_CREATE_NONFINITE)


def is_weighted(module: nn.Module) -> bool:
    """Linear/Conv/Bilinear/Embedding-like layers (and transformers' Conv1D)."""
    return isinstance(module, _WEIGHTED) or type(module).__name__ in _WEIGHTED_NAMES


def is_embedding(module: nn.Module) -> bool:
    return isinstance(module, _EMBEDDING)


def layer_kind(module: nn.Module) -> str:
    """'relu' | 'tanh' | 'sigmoid' | 'weighted' | 'other': which activation probes apply."""
    if isinstance(module, _RELU_FAMILY):  # before Hardtanh: ReLU6 subclasses it
        return "relu"
    if isinstance(module, _TANH_LIKE):
        return "tanh"
    if isinstance(module, _SIGMOID_LIKE):
        return "sigmoid"
    if is_weighted(module):
        return "weighted"
    return "other"


def first_tensor(value: object) -> torch.Tensor | None:
    """The first floating-point tensor in a module output (tensor, tuple/list, dict, or an
    object with a ``to_tuple()`` such as transformers' ``ModelOutput``)."""
    if isinstance(value, torch.Tensor):
        return value if value.is_floating_point() else None
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    if isinstance(value, dict):
        for item in value.values():
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def nonfinite_sentinel(y: torch.Tensor) -> torch.Tensor:
    """The float32 sum of ``y``: one cheap reduction per step, judged at flush time. It is
    NaN/Inf exactly when ``y`` holds a NaN/Inf, or when a finite sum overflows float32
    (|sum| > 3.4e38, itself a sign of trouble)."""
    return y.sum(dtype=torch.float32)


_EAGER_SUMMARY = summary_kernel("eager")


def activation_entries(
    y: torch.Tensor,
    kind: str,
    unit_dim: int,
    level: float,
    nonfinite_sample: int | None,
    summary: Callable[..., torch.Tensor] = _EAGER_SUMMARY,
    hints: torch.Tensor | None = None,
) -> list[Entry]:
    """Raw summary of the output (its NaN/Inf count estimated from ``nonfinite_sample``
    values: exactly 0 when the output is finite); saturated count (tanh-like |y| > level,
    sigmoid-like |2y - 1| > level, the same cut in tanh units since sigmoid(x) =
    (1 + tanh(x/2)) / 2); per-unit 'alive' flags (ReLU family: a unit is dead when zero for
    the whole step). ``hints``: the C kernels' proposed shift (``kernels``). (A
    ReLU's per-unit C-kernel summaries were measured slower than the flat summary plus
    ATen's ``amax``: 155 against 80 us on (128, 1024).)"""
    raw = summary(y, nonfinite_sample=nonfinite_sample, hints=hints)
    entries: list[Entry] = [(ACT, raw, "summary")]
    if kind in ("tanh", "sigmoid"):
        work = work_like(y, y.dtype, "monitor.saturation")  # no page faults on CPU
        if kind == "tanh":
            torch.abs(y, out=work)
        else:
            torch.sub(y, 0.5, out=work).abs_().mul_(2.0)
        saturated = work.gt_(level).sum(dtype=torch.float64)
        entries.append((ACT_SATURATED, saturated, "sum"))
    elif kind == "relu" and y.dim() >= 2:
        other_dims = tuple(d for d in range(y.dim()) if d != unit_dim % y.dim())
        alive = (y.amax(dim=other_dims) > 0).to(torch.float32)
        entries.append((ACT_ALIVE, alive, "max"))
    return entries


def output_grad_entries(
    grad: torch.Tensor,
    summary: Callable[..., torch.Tensor] = _EAGER_SUMMARY,
    hints: torch.Tensor | None = None,
) -> list[Entry]:
    """Summary of the gradient of the loss w.r.t. a layer's output (its std is reported)."""
    raw = summary(grad, extremes=False, count_nonfinite=False, hints=hints)
    return [(OUT_GRAD, raw, "summary")]


def unit_summaries(x: torch.Tensor, dim: int, kernels: str) -> torch.Tensor | None:
    """``(F + 1, 7)`` raw summaries of each index of ``x``'s dimension ``dim`` (values pooled
    over every other dimension) and of the whole tensor, by the C kernels; None where they do
    not apply (eager kernels, an unsupported tensor or layout)."""
    if kernels == "eager" or not x.numel() or not native.supports(x):
        return None
    layout = native.feature_layout(x, dim)
    if layout is None or not native_kernels(kernels):  # type: ignore[arg-type]
        return None
    return native.feature_summaries(x, layout)


def input_feature_entries(x: torch.Tensor, kernels: str = "eager") -> list[Entry]:
    """Per-feature raw summaries ``(F, 7)`` of a floating model input: features are the columns
    of an (N, F) input, the last dim of an (N, L, F) sequence and the channels of an
    (N, C, *spatial) image (values pooled over samples and positions)."""
    per_feature = unit_summaries(x, -1 if x.dim() <= 3 else 1, kernels)
    if per_feature is not None:
        return [(INPUT_FEATURES, per_feature[:-1], "summary")]
    if x.dim() == 2:
        columns = x
    elif x.dim() == 3:
        columns = x.reshape(-1, x.shape[-1])
    else:
        columns = x.transpose(0, 1).reshape(x.shape[1], -1).T
    return [(INPUT_FEATURES, as_raw(_column_summaries(columns)), "summary")]


def _column_summaries(columns: torch.Tensor) -> torch.Tensor:
    """``(F, 6)`` summaries of the columns of an (n, F) matrix: count, mean, centred M2,
    min, max and NaN/Inf count per column."""
    x = columns.detach().to(torch.promote_types(columns.dtype, torch.float32))
    n = x.shape[0]
    shift = x.sum(0) / max(n, 1)
    centred = x - shift
    residual = centred.sum(0).double()
    mean = shift.double() + residual / max(n, 1)
    m2 = (centred.square().sum(0).double() - residual.square() / max(n, 1)).clamp(min=0.0)
    nonfinite = (x * 0).isnan().sum(0).double()
    count = torch.full_like(mean, float(n))
    return torch.stack([count, mean, m2, x.amin(0).double(), x.amax(0).double(), nonfinite], -1)


HISTOGRAM_RUN = 16  # consecutive values per run of a histogram sample (a float32 cache line)


def sample_layout(numel: int, max_values: int | None) -> tuple[int, int, int]:
    """``(run, runs, step)`` of the histogram sample of ``numel`` values: ``runs`` runs of
    ``run`` consecutive values (of the flattened tensor), one starting every ``step`` values;
    every value when there are at most ``max_values`` (one run of all of them). Runs, not
    every k-th value: a strided sample touches a cache line per value, a whole pass over the
    tensor for k <= 16."""
    if max_values is None or numel <= max_values:
        return numel, 1, max(numel, 1)
    run = min(HISTOGRAM_RUN, max_values)
    runs = max_values // run
    return run, runs, numel // runs


def histogram_sample(x: torch.Tensor, max_values: int | None) -> torch.Tensor:
    """The values of ``x`` a histogram bins (``sample_layout``), as a 1-d tensor (a view
    where no sampling is needed)."""
    flat = x.reshape(-1)
    run, runs, step = sample_layout(flat.numel(), max_values)
    if runs == 1:
        return flat
    return flat.unfold(0, run, step)[:runs].reshape(-1)


def native_histograms_apply(tensors: list[torch.Tensor], kernels: str) -> bool:
    """Whether ``histogram_counts`` bins these tensors in place with the C kernels."""
    return (
        kernels != "eager"
        and all(t.is_contiguous() and native.supports(t) for t in tensors)
        and native_kernels(kernels)  # type: ignore[arg-type]
    )


def histogram_counts(
    tensors: list[torch.Tensor],
    bins: int,
    value_range: tuple[float, float],
    max_values: int | None,
    log10_abs: bool = False,
    kernels: str = "eager",
) -> torch.Tensor:
    """``histograms`` of each tensor's ``histogram_sample``; with ``kernels`` "auto" or
    "compiled" on CPU tensors the C kernel reads the sample where it lies (no copy, one
    call)."""
    if native_histograms_apply(tensors, kernels):
        layouts = [sample_layout(t.numel(), max_values) for t in tensors]
        return native.histograms(tensors, layouts, bins, value_range, log10_abs)
    samples = [histogram_sample(t, max_values) for t in tensors]
    return histograms(samples, bins, value_range, log10_abs)


def histograms(
    samples: list[torch.Tensor],
    bins: int,
    value_range: tuple[float, float],
    log10_abs: bool = False,
) -> torch.Tensor:
    """``(len(samples), bins)`` counts of each 1-d sample in ``bins`` equal bins over
    ``value_range``, all in one pass (``torch.bincount`` over bin index + row * bins): values
    outside the range and +-Inf go to the end bins, NaN is left out, as ``torch.histc`` does.
    ``log10_abs`` bins log10 |value| instead (zeros: -inf, the first bin)."""
    low, high = value_range
    flat = torch.cat([s.float() for s in samples])
    if log10_abs:
        flat = flat.abs_().log10_()
    rows = torch.repeat_interleave(
        torch.arange(len(samples), device=flat.device),
        torch.tensor([s.numel() for s in samples], device=flat.device),
    )
    position = (flat.clamp(low, high) - low) * (bins / (high - low))
    index = position.floor_().clamp_(0, bins - 1).nan_to_num_(-1.0).long()
    dropped = len(samples) * bins  # NaN: a bin past the end, cut off below
    index = torch.where(index < 0, dropped, index + rows * bins)
    counts = torch.bincount(index, minlength=dropped + 1)[:dropped]
    return counts.view(len(samples), bins).to(torch.float32)


def activation_sample(y: torch.Tensor, max_values: int | None) -> torch.Tensor:
    """What ``act_hist`` bins: a sample of the output's values (``histogram_sample``; a
    copy, so the activation itself is not kept alive)."""
    return histogram_sample(y, max_values).float().clone()


def histogram_edges(bins: int, value_range: tuple[float, float]) -> torch.Tensor:
    """The ``bins + 1`` fixed edges (float64) of a histogram over ``value_range``."""
    return torch.linspace(value_range[0], value_range[1], bins + 1, dtype=torch.float64)


def metric_histogram_edges(config: object) -> dict[str, object]:
    """numpy edges of the monitor's two histogram metrics: ``act_hist`` over activation
    values, ``grad_hist`` over log10 |gradient|."""
    return {
        ACT_HIST: histogram_edges(
            config.histogram_bins,  # type: ignore[attr-defined]
            config.activation_histogram_range,  # type: ignore[attr-defined]
        ).numpy(),
        GRAD_HIST: histogram_edges(
            config.histogram_bins,  # type: ignore[attr-defined]
            config.gradient_histogram_log10_range,  # type: ignore[attr-defined]
        ).numpy(),
    }


_SHAPE_ONLY = ("View", "Reshape", "UnsafeView", "Permute", "Transpose", "T", "Clone", "Select",
               "Slice", "Unsqueeze", "Squeeze", "Expand", "ToCopy", "Alias", "Index")  # fmt: skip
_PROBABILITIES = {"SoftmaxBackward0": "softmax", "SigmoidBackward0": "sigmoid"}
_LOGIT_LOSSES = {
    "LogSoftmaxBackward0": "cross_entropy",  # every cross_entropy starts with log_softmax
    "BinaryCrossEntropyWithLogitsBackward0": "binary_cross_entropy_with_logits",
}


def _through_shape_ops(node: object, hops: int = 8) -> object:
    """The first node behind ``node`` that is not a view, reshape, transpose or cast."""
    for _ in range(hops):
        name = type(node).__name__
        if not any(name.startswith(op) and name.endswith(("Backward0", "Backward1"))
                   for op in _SHAPE_ONLY):  # fmt: skip
            return node
        inputs = [n for n, _ in node.next_functions if n is not None]  # type: ignore[attr-defined]
        if len(inputs) != 1:
            return node
        node = inputs[0]
    return node


def probabilities_fed_to_logit_loss(loss: torch.Tensor, budget: int = 64) -> tuple[str, str] | None:
    """(loss, activation) when the loss's autograd graph shows probabilities fed to a loss that
    expects logits: ``cross_entropy(softmax(x))`` or ``binary_cross_entropy_with_logits(
    sigmoid(x))`` (reshapes and casts in between allowed). Python only: walks at most
    ``budget`` graph nodes from the loss, no tensor is read. None otherwise (also under
    torch.compile, whose graph is one opaque node)."""
    start = getattr(loss, "grad_fn", None)
    queue, seen = [start], set()
    while queue and len(seen) < budget:
        node = queue.pop(0)
        if node is None or node in seen:
            continue
        seen.add(node)
        kind = _LOGIT_LOSSES.get(type(node).__name__)
        if kind is not None:
            first = node.next_functions[0][0] if node.next_functions else None
            behind = _through_shape_ops(first) if first is not None else None
            activation = _PROBABILITIES.get(type(behind).__name__)
            if activation is not None:
                return kind, activation
            continue  # do not search inside the model below a logit loss
        queue.extend(n for n, _ in node.next_functions if n is not None)
    return None
