"""DocumentParse: docstrange behind an offline, isolated worker pool."""
