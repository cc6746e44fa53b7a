"""An example afd-bench plugin package (see vaft_clean.py)."""
