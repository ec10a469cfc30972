"""PDF: the text layer page by page (text.py), its ruled tables (tables.py), headings
and column order from fonts and geometry (structure.py), OCR for pages without text."""
