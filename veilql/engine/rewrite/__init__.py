"""VeilQL engine: rewrite."""
