"""`oracle import`: finished histories from files into the database, as the API would store them."""

from service.importer.loader import ImportSummary, import_paths

__all__ = ["ImportSummary", "import_paths"]
