"""The server process's side of DocumentParse: it never imports a reader."""
