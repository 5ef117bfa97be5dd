"""Configuration: YAML loading with positions, a validated schema, and collected errors."""
