"""furnace."""
