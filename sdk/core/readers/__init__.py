"""torch-free readers of converted model files, shared by converters (checks, coverage) and backends."""
