"""DocumentParse: docstrange behind an offline, isolated worker pool.

Laid out by where the code runs, then by format:

- ``server/``: in the server process: the RPC servicer, request validation, type
  detection, the parser that owns the worker pool, model-filled fields, chunk counting.
- ``worker/``: in a parser worker process: its entry point, sandbox, limits, test faults,
  and the dispatch from a job's type to its reader.
- ``readers/``: one module (or package: ``pdf/``) per format, the docstrange adapter, the
  bundled OCR engine and the markdown table helpers every reader shares.
- Here, shared by both sides: the format registry (formats.py: a new format is one row
  there and one reader module), domain types, outputs, structured fields, chunking and
  the OCR model check.
"""
