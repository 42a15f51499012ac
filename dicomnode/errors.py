"""Exception hierarchy. Specific errors rise to the one place that records them."""


class DicomnodeError(Exception):
    """Base class of every error dicomnode raises on purpose."""


class ConfigError(DicomnodeError):
    """The configuration file is missing or invalid; the message lists every problem."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration {path}:\n{lines}")


class SchemaError(DicomnodeError):
    """The database is not at this dicomnode's schema revision; the message says what to do."""


class InstanceRejected(DicomnodeError):
    """An incoming instance cannot be stored; carries the DIMSE status to return."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"0x{status:04X}: {reason}")


class VolumeError(DicomnodeError):
    """Stored instances cannot be turned into a consistent volume."""


class ModelError(DicomnodeError):
    """A model bundle is missing, incompatible or fails."""


class DeliveryError(DicomnodeError):
    """A result could not be delivered to a destination."""


class LeaseLost(DicomnodeError):
    """A claim (job or outbox item) expired and was taken over: its result is not recorded."""


class RetrievalError(DicomnodeError):
    """A PACS query or retrieval (C-FIND, C-MOVE) failed: no association, or a failure status."""
