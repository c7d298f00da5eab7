"""VeilQL engine: dp."""
