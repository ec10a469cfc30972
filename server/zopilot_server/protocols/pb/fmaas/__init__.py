"""TGIS fmaas stubs (generated)."""
