"""Model formats: one module per format, found through :mod:`streamserve.formats.registry`."""
