"""Federation and policy files: the model (frozen dataclasses) and the TOML loader."""
