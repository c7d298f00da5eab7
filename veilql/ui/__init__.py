"""User interfaces: output formats, shell, Jupyter magic, reports."""
