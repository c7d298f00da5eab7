"""VeilQL engine: sql."""
