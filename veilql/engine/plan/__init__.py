"""VeilQL engine: plan."""
