"""One reader per format (formats.py names them as ``"module:function"``); each runs in
a parser worker and returns an Extraction. Shared here: markdown_tables.py (tables and
sheet values), common.py (the hardened XML parser), docstrange.py (the adapter) and
ocr.py (the bundled OCR engine). A reader never imports the worker's dispatch."""
