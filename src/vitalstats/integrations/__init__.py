"""Integrations with trainers users already use (optional; their libraries are not dependencies).

- ``vitalstats.integrations.lightning.VitalstatsCallback``: PyTorch Lightning ``Callback``.
- ``vitalstats.integrations.huggingface.VitalstatsTrainerCallback``: transformers ``TrainerCallback``.

Each drives one ``vs.Monitor`` through ``MonitorAdapter``: one Monitor step per optimiser step
with the mean loss of the step's micro-batches.
"""

from vitalstats.integrations.adapter import MonitorAdapter, loss_tensor

__all__ = ["MonitorAdapter", "loss_tensor"]
