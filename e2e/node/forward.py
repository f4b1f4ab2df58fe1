"""Make a loopback-only server of the host appear on the node's IP, inside the node's network.

    python -m e2e.node.forward --netns /run/netns/llmsvc0 --listen 10.250.0.2:6443 --to 127.0.0.1:6443

The listening socket is created inside the node's network namespace (setns on this thread,
then back), the outgoing connections on the host's loopback: the API server keeps listening
on 127.0.0.1 only, and the node, its pods and its daemons reach it at the node IP, as on a
single-node kind cluster where the API server runs on the node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import socket

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def listen_in(netns: str, host: str, port: int) -> socket.socket:
    """A listening TCP socket that lives in `netns`; this thread is back in its own afterwards."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        _setns(target)
        try:
            sock = socket.create_server((host, port), reuse_port=False)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)
    sock.setblocking(False)
    return sock


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


async def serve(sock: socket.socket, to_host: str, to_port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(to_host, to_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, sock=sock)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--netns", required=True, help="path of the network namespace to listen in")
    parser.add_argument("--listen", required=True, metavar="IP:PORT")
    parser.add_argument("--to", required=True, metavar="IP:PORT", help="host address to forward to")
    args = parser.parse_args()
    lhost, lport = args.listen.rsplit(":", 1)
    thost, tport = args.to.rsplit(":", 1)
    sock = listen_in(args.netns, lhost, int(lport))
    asyncio.run(serve(sock, thost, int(tport)))


if __name__ == "__main__":
    main()
