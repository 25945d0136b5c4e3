"""A Hugging Face ``TrainerCallback`` that attaches a ``vs.Monitor`` to the Trainer's model.

    from vitalstats.integrations.huggingface import VitalstatsTrainerCallback
    trainer = transformers.Trainer(..., callbacks=[VitalstatsTrainerCallback(store="runs/hf.sqlite")])

Hooks used (the documented ``TrainerCallback`` API): ``on_train_begin`` receives ``model``
and ``optimizer`` as keyword arguments and attaches the Monitor. The Trainer does not hand
callbacks the per-step loss, so the callback reads it where the model returns it: a forward
hook on the model keeps ``outputs.loss`` (a device tensor, no host sync) of every *training*
forward; ``on_step_end`` (after the optimiser step; ``state.global_step`` counts optimiser
steps, so gradient accumulation is one step) records one Monitor step with the mean of those
losses. A model that returns no loss (a custom ``compute_loss``) still gets every other
statistic. The Trainer has no "evaluation begins" event (``on_evaluate`` comes after it), so a
forward pre-hook enters ``mon.evaluating()`` at the first forward with ``model.training ==
False`` and leaves it at the next training forward or at ``on_evaluate``. ``on_train_end``
closes the Monitor.

``transformers`` is not a dependency of vitalstats.
"""

from __future__ import annotations

from typing import Any

from vitalstats.integrations.adapter import MonitorAdapter, loss_tensor


def _trainer_callback_base() -> type:
    try:
        from transformers import TrainerCallback
    except ImportError:
        raise ImportError(
            "VitalstatsTrainerCallback needs Hugging Face transformers: pip install transformers"
        ) from None
    return TrainerCallback


class TrainerHooks:
    """The callback's behaviour, independent of the transformers base class."""

    def __init__(self, **monitor_kwargs: Any):
        super().__init__()
        self.adapter = MonitorAdapter(**monitor_kwargs)
        self._hooks: list[Any] = []

    @property
    def monitor(self) -> Any:
        return self.adapter.monitor

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs.get("model")
        if model is None:
            raise ValueError(
                "VitalstatsTrainerCallback.on_train_begin got no model; it must be called by "
                "transformers.Trainer, which passes model= and optimizer="
            )
        self.adapter.start(model, kwargs.get("optimizer"), state.global_step)
        self._hooks = [
            model.register_forward_pre_hook(self._track_phase),
            model.register_forward_hook(self._keep_training_loss),
        ]

    def _track_phase(self, module: Any, inputs: Any) -> None:
        if module.training:
            self.adapter.end_evaluation()
        else:
            self.adapter.begin_evaluation()

    def _keep_training_loss(self, module: Any, inputs: Any, output: Any) -> None:
        if module.training:
            loss = loss_tensor(output)
            if loss is not None:
                self.adapter.add_loss(loss)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.adapter.optimizer_step_end()

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.adapter.end_evaluation()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.adapter.finish()


_callback_class: type | None = None


def __getattr__(name: str) -> Any:
    global _callback_class
    if name == "VitalstatsTrainerCallback":
        if _callback_class is None:
            _callback_class = type(
                "VitalstatsTrainerCallback",
                (TrainerHooks, _trainer_callback_base()),
                {"__doc__": "Attach a vs.Monitor to a transformers.Trainer model (see module docs).",
                 "__module__": __name__},
            )  # fmt: skip
        return _callback_class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
