"""The serving core: model slots per key, off-path loading, batch scoring, statistics."""
