"""VeilQL: SQL across organisations on secret shares, with differential privacy.

The public Python API grows here (``veilql.connect``); see CONTRACT.md.
"""

__version__ = "0.1.0"
