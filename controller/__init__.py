"""retrain-controller: Alertmanager alerts in; retraining pipelines, canary analysis, promotion or rollback out."""

__version__ = "0.1.0"
