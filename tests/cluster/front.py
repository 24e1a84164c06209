"""A front for several Hearth processes of one server: each request goes to
the next process in turn, so a client's consecutive requests (a send, the
sync that should see it) land on different processes. Used by
scripts/test.sh to run the conformance suite and the matrix-nio test against
two processes.

    front.py LISTEN_PORT BACKEND_URL [BACKEND_URL ...]
"""

import itertools
import sys

from aiohttp import ClientSession, ClientTimeout, web

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "te", "trailers", "transfer-encoding", "upgrade", "content-length", "host",
}


def main() -> None:
    port = int(sys.argv[1])
    backends = itertools.cycle(sys.argv[2:])
    session: ClientSession | None = None

    async def start(app: web.Application) -> None:
        nonlocal session
        # Long-polls may wait minutes; nothing here should cut them short.
        session = ClientSession(timeout=ClientTimeout(total=None), auto_decompress=False)

    async def stop(app: web.Application) -> None:
        if session is not None:
            await session.close()

    async def forward(request: web.Request) -> web.StreamResponse:
        assert session is not None
        url = next(backends) + str(request.rel_url)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with session.request(request.method, url, headers=headers, data=body,
                                   allow_redirects=False) as upstream:
            payload = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=upstream.status, body=payload, headers=out)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
