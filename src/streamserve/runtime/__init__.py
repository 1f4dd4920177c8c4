"""Runtimes move batches between sources, the serving core and sinks; they hold no model logic."""
