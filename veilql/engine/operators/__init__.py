"""VeilQL engine: operators."""
