"""Kernel backends: the numpy reference backend lives here; others come from plugins."""
