"""What a use case refuses, for the web layer to map to HTTP."""


class UnknownRun(LookupError):
    """No such run (HTTP 404)."""


class UnknownModel(LookupError):
    """No such model in the config (HTTP 404)."""


class Conflict(Exception):
    """The action contradicts the run's or the model's state (HTTP 409)."""


class RunFinished(Exception):
    """The run ended: it takes no more events or actions (HTTP 403 for callbacks, 409 for operators)."""
