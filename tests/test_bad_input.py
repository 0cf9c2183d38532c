"""Bad input, as asyncio takes it (issue 15, point 4): the same exception type and message, or
the same acceptance, on asyncio's loop and on ferroloop."""

import pytest


def test_create_server_takes_a_negative_backlog(run, loop):
    """``socket.listen()`` takes a negative backlog (as 0), so asyncio's create_server does."""

    async def main():
        server = await loop.create_server(lambda: None, "127.0.0.1", 0, backlog=-1)
        assert server.is_serving()
        server.close()
        await server.wait_closed()

    run(main())


def test_create_server_refuses_a_backlog_beyond_a_c_int(run, loop):
    async def main():
        with pytest.raises(OverflowError, match="signed integer is greater than maximum"):
            await loop.create_server(lambda: None, "127.0.0.1", 0, backlog=2**31)

    run(main())
