"""A PyTorch Lightning ``Callback`` that attaches a ``vs.Monitor`` to the LightningModule.

    from vitalstats.integrations.lightning import VitalstatsCallback
    trainer = lightning.pytorch.Trainer(callbacks=[VitalstatsCallback(store="runs/exp1.sqlite")])

Hooks used (Lightning's documented ``Callback`` API): ``on_fit_start`` attaches the Monitor to
``pl_module`` and ``trainer.optimizers[0]``; ``on_train_batch_end`` keeps the batch's loss
(``outputs["loss"]``, which under automatic optimisation Lightning has divided by
``accumulate_grad_batches``; the callback multiplies that back) and, when
``trainer.global_step`` has moved (an optimiser step happened; with ``accumulate_grad_batches``
it moves every N batches), records one Monitor step with the mean loss of those batches;
``on_train_start`` (after a checkpoint restored ``global_step``) resets the step baseline;
``on_validation_start``/``on_validation_end`` bracket ``mon.evaluating()``; ``on_fit_end``
closes the Monitor and ``on_exception`` closes it marking the run crashed.

Works with ``lightning`` (``lightning.pytorch``) or the older ``pytorch_lightning`` package;
neither is a dependency of vitalstats.
"""

from __future__ import annotations

from typing import Any

from vitalstats.integrations.adapter import MonitorAdapter, loss_tensor


def _lightning_callback_base() -> type:
    try:
        from lightning.pytorch.callbacks import Callback
    except ImportError:
        try:
            from pytorch_lightning.callbacks import Callback
        except ImportError:
            raise ImportError(
                "VitalstatsCallback needs PyTorch Lightning: pip install lightning"
            ) from None
    return Callback


class LightningHooks:
    """The callback's behaviour, independent of the Lightning base class (tested without it)."""

    def __init__(self, **monitor_kwargs: Any):
        super().__init__()
        self.adapter = MonitorAdapter(**monitor_kwargs)

    @property
    def monitor(self) -> Any:
        """The live ``vs.Monitor`` between fit start and fit end, else None."""
        return self.adapter.monitor

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        optimizers = list(getattr(trainer, "optimizers", []) or [])
        self.adapter.start(pl_module, optimizers[0] if optimizers else None, trainer.global_step)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # Runs after a checkpoint restored trainer.global_step; the next step counts from here.
        self.adapter.sync_optimizer_step(trainer.global_step)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = loss_tensor(outputs)
        if loss is not None and getattr(pl_module, "automatic_optimization", True):
            # Automatic optimisation hands callbacks loss / accumulate_grad_batches (the
            # value it back-propagates); undo that so the Monitor sees the batch's own loss.
            loss = loss.detach() * getattr(trainer, "accumulate_grad_batches", 1)
        self.adapter.micro_batch_end(loss, trainer.global_step)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self.adapter.begin_evaluation()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self.adapter.end_evaluation()

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.adapter.finish()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.adapter.finish(crashed=True)


_callback_class: type | None = None


def __getattr__(name: str) -> Any:
    global _callback_class
    if name == "VitalstatsCallback":
        if _callback_class is None:
            base = _lightning_callback_base()
            _callback_class = type(
                "VitalstatsCallback",
                (LightningHooks, base),
                {"__doc__": "Attach a vs.Monitor to a LightningModule (see module docs).",
                 "__module__": __name__},
            )  # fmt: skip
        return _callback_class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
