"""The domain error tree. The service maps each class to one HTTP status in one table."""


class OracleError(Exception):
    """Base of every error the domain raises on purpose."""


class NotFound(OracleError):
    """A study, run or model version that the caller named does not exist."""


class Conflict(OracleError):
    """The request contradicts stored state (other values for a stored epoch, an ended run...)."""


class InvalidInput(OracleError):
    """The request is well-formed JSON but its values cannot be accepted."""


class ModelUnavailable(OracleError):
    """No usable model: none is active, or an artifact failed to load."""


class StorageUnavailable(OracleError):
    """The database cannot be reached or cannot be written right now; retrying later may work."""


class SchemaMismatch(OracleError):
    """The database's schema is not this code's: ahead of it, or behind it and not to be
    migrated now (`oracle serve` refuses to start; /readyz is not ready)."""
