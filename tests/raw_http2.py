"""A raw HTTP/2 client (the h2 package) for the shapes a gRPC client cannot make."""

from __future__ import annotations

import socket
import struct

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings


class RawHttp2:
    """A raw HTTP/2 client: it grants the server no flow-control window for responses
    (SETTINGS_INITIAL_WINDOW_SIZE 0) and never updates it, a consumer that never reads."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.sock.settimeout(0.1)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        self.events: list[h2.events.Event] = []
        self._eof = False
        self._flush()

    def call(self, method: str, message: bytes) -> int:
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, self._headers(method))
        frame = b"\0" + struct.pack(">I", len(message)) + message
        self.conn.send_data(stream, frame, end_stream=True)
        self._flush()
        return stream

    def half_send(self, method: str) -> int:
        """HEADERS and the start of a message that promises 1000 bytes, never finished."""
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, self._headers(method))
        self.conn.send_data(stream, b"\0" + struct.pack(">I", 1000) + b"half")
        self._flush()
        return stream

    def closed(self) -> bool:
        """The server closed the connection (GOAWAY or EOF)."""
        self.pump()
        return self._eof or any(isinstance(e, h2.events.ConnectionTerminated) for e in self.events)

    def pump(self) -> None:
        """Read what the server sent (answering its pings, granting no window)."""
        if self._eof:
            return
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        except OSError:
            data = b""
        if not data:
            self._eof = True
            return
        try:
            self.events += self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:  # frames after the server's GOAWAY
            self._eof = True
            return
        self._flush()

    def ended(self, stream: int) -> bool:
        self.pump()
        return any(
            isinstance(e, h2.events.StreamReset | h2.events.StreamEnded) and e.stream_id == stream
            for e in self.events
        )

    @staticmethod
    def _headers(method: str) -> list[tuple[str, str]]:
        return [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "x"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        try:
            self.sock.sendall(data)
        except OSError:  # the server closed the connection
            self._eof = True

    def close(self) -> None:
        self.sock.close()
