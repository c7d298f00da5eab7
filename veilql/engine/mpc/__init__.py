"""VeilQL engine: mpc."""
