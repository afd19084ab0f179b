"""The Textual terminal app: one file per widget, fed only by search events."""
