"""Shipped presets (one YAML file each); installed as cvkit._presets."""
