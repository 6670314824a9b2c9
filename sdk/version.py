"""The SDK's version and the bundle schema version it writes."""
__version__ = "0.1.0"
SCHEMA_VERSION = 1
