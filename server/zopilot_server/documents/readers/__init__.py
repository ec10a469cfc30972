"""Readers of the formats without a docstrange processor, one module per format
(formats.py names them); each runs in a parser worker and returns an Extraction."""
