#!/usr/bin/env python3
"""Deletes JetStream streams by name over the plain NATS protocol (no client library needed).

Usage: scripts/nats-delete-streams.py [--url nats://127.0.0.1:4222] STREAM...
Used by scripts/test.sh to remove what its conformance run created."""
import argparse
import json
import socket
from urllib.parse import urlparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("streams", nargs="+")
    args = parser.parse_args()
    url = urlparse(args.url)
    connection = socket.create_connection((url.hostname or "127.0.0.1", url.port or 4222), timeout=5)
    reader = connection.makefile("rb")
    reader.readline()  # INFO
    connection.sendall(b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\nSUB _INBOX.cleanup 1\r\n')
    for stream in args.streams:
        connection.sendall(f"PUB $JS.API.STREAM.DELETE.{stream} _INBOX.cleanup 0\r\n\r\n".encode())
        while True:
            line = reader.readline()
            if line.startswith(b"PING"):
                connection.sendall(b"PONG\r\n")
            elif line.startswith(b"MSG") or line.startswith(b"HMSG"):
                size = int(line.split()[-1])
                payload = reader.read(size + 2)[:-2]
                text = payload.decode(errors="replace")
                body = text[text.find("{"):] if "{" in text else "{}"
                result = json.loads(body)
                print(f"{stream}: {'deleted' if result.get('success') else result.get('error', {}).get('description', 'not found')}")
                break
    connection.close()


if __name__ == "__main__":
    main()
