"""Model families, one per file: a config dataclass, the modules, and a ``MODELS`` table of variants."""
