"""A small HTTP/1.1 client for the end-to-end tests (``http.client`` only).

Paths are sent exactly as given (``%2F``, ``%C3%A9`` stay encoded), bodies
may be iterables of bytes (streamed, never held whole in memory), and
downloads can be hashed while they are read.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union
from urllib.parse import urlsplit

CHUNK_SIZE = 64 * 1024
MiB = 1024 * 1024

Body = Union[None, bytes, Iterable[bytes]]


@dataclass
class HTTPResult:
    status: int
    reason: str
    headers: List[Tuple[str, str]]
    body: bytes = b""
    # For streamed downloads: byte count and sha256 of the body, not kept.
    size: int = 0
    sha256: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return default

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)


class HTTPClient:
    """Requests to one ``http://host:port`` or ``https://host:port`` base URL
    (https: the test servers' self-signed certificates are not verified).

    Each call uses a new connection unless it is made through
    ``connection()``, which keeps one open (HTTP keep-alive)."""

    def __init__(self, base_url: str, timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        assert parts.scheme in ("http", "https") and parts.hostname and parts.port, base_url
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.timeout = timeout

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def connection(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=context)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def request(
        self,
        method: str,
        path: str,
        body: Body = None,
        headers: Optional[Mapping[str, str]] = None,
        *,
        stream: bool = False,
        conn: Optional[http.client.HTTPConnection] = None,
    ) -> HTTPResult:
        """Send one request. ``stream=True`` hashes the body instead of keeping it.

        An iterable body is sent chunked unless ``headers`` has a Content-Length."""
        own = conn is None
        conn = conn or self.connection()
        try:
            hdrs = dict(headers or {})
            conn.putrequest(method, path, skip_accept_encoding=True)
            if isinstance(body, (bytes, bytearray)) and not _has(hdrs, "Content-Length"):
                hdrs["Content-Length"] = str(len(body))
            chunked = body is not None and not isinstance(body, (bytes, bytearray)) and not _has(hdrs, "Content-Length")
            if chunked:
                hdrs["Transfer-Encoding"] = "chunked"
            for name, value in hdrs.items():
                conn.putheader(name, value)
            conn.endheaders()
            if isinstance(body, (bytes, bytearray)):
                conn.send(body)
            elif body is not None:
                for chunk in body:
                    if not chunk:
                        continue
                    conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                if chunked:
                    conn.send(b"0\r\n\r\n")
            resp = conn.getresponse()
            result = HTTPResult(resp.status, resp.reason, resp.getheaders())
            if stream:
                digest = hashlib.sha256()
                while True:
                    chunk = resp.read(CHUNK_SIZE)
                    if not chunk:
                        break
                    digest.update(chunk)
                    result.size += len(chunk)
                result.sha256 = digest.hexdigest()
            else:
                result.body = resp.read()
                result.size = len(result.body)
                result.sha256 = hashlib.sha256(result.body).hexdigest()
            return result
        finally:
            if own:
                conn.close()

    def get(self, path: str, **kwargs: Any) -> HTTPResult:
        return self.request("GET", path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> HTTPResult:
        return self.request("HEAD", path, **kwargs)

    def post(
        self, path: str, body: Body = None, headers: Optional[Mapping[str, str]] = None, **kwargs: Any
    ) -> HTTPResult:
        return self.request("POST", path, body, headers, **kwargs)

    def post_form(self, path: str, fields: Mapping[str, Union[str, List[str]]], **kwargs: Any) -> HTTPResult:
        from urllib.parse import urlencode

        body = urlencode(fields, doseq=True).encode("ascii")
        return self.post(path, body, {"Content-Type": "application/x-www-form-urlencoded"}, **kwargs)


def _has(headers: Mapping[str, str], name: str) -> bool:
    return any(k.lower() == name.lower() for k in headers)


# -- payloads ------------------------------------------------------------


def pattern_chunks(size: int, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The bytes ``/download/<size>`` of the example app sends: byte i is
    ``(i + i // 65536) % 256``. Computed here independently of the app."""
    block = bytes(range(256)) * (CHUNK_SIZE // 256)
    data_pos = 0
    while data_pos < size:
        k = data_pos // CHUNK_SIZE
        table = bytes((b + k) % 256 for b in range(256))
        piece = block.translate(table)[: min(CHUNK_SIZE, size - data_pos)]
        for i in range(0, len(piece), chunk_size):
            yield piece[i : i + chunk_size]
        data_pos += len(piece)


def sha256_of(chunks: Iterable[bytes]) -> Tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


class HashingPayload:
    """``size`` pseudo-random bytes (seeded, so reproducible), produced lazily
    in chunks and hashed on the way out: iterate it as a request body, then
    read ``.sha256`` and ``.sent``."""

    def __init__(self, size: int, seed: int = 1, chunk_size: int = CHUNK_SIZE) -> None:
        self.size = size
        self.seed = seed
        self.chunk_size = chunk_size
        self.sent = 0
        self._digest = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        rng = random.Random(self.seed)
        remaining = self.size
        while remaining:
            n = min(self.chunk_size, remaining)
            chunk = rng.getrandbits(n * 8).to_bytes(n, "little")
            self._digest.update(chunk)
            self.sent += n
            remaining -= n
            yield chunk

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


def multipart_file(
    field_name: str, filename: str, chunks: Iterable[bytes], size: int, content_type: str = "application/octet-stream"
) -> Tuple[Dict[str, str], Iterator[bytes]]:
    """A multipart/form-data body with one file field, streamed.

    Returns the headers (with an exact Content-Length) and the body iterator."""
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode("utf-8")
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")

    def body() -> Iterator[bytes]:
        yield head
        yield from chunks
        yield tail

    headers = {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(head) + size + len(tail)),
    }
    return headers, body()
