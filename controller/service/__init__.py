"""The use cases, one room per job. `bootstrap.build_service` puts them together; nothing else should."""

from __future__ import annotations

from dataclasses import dataclass

from controller.service.canary import CanaryRoom
from controller.service.errors import Conflict, RunFinished, UnknownModel, UnknownRun
from controller.service.intake import Intake
from controller.service.ledger import RunLedger
from controller.service.operations import Operations
from controller.service.pipelines import PipelineTracker
from controller.service.reconciler import Reconciler
from controller.service.views import Views

__all__ = ["CanaryRoom", "Conflict", "RunFinished", "Service", "UnknownModel", "UnknownRun"]


@dataclass
class Service:
    """The rooms of one controller, sharing one ledger."""

    ledger: RunLedger
    intake: Intake
    pipelines: PipelineTracker
    reconciler: Reconciler
    operations: Operations
    views: Views
    canaries: dict[str, CanaryRoom]
