"""What the CLI reports out of Trio's exception groups."""

from __future__ import annotations

import trio

from buildpy.errors import sole


def test_sole_prefers_ctrl_c_then_the_first_real_error() -> None:
    first, second = ValueError("first"), OSError("second")
    group = BaseExceptionGroup("outer", [ExceptionGroup("inner", [first]), second])
    assert sole(group) is first
    interrupt = KeyboardInterrupt()
    assert sole(BaseExceptionGroup("g", [first, interrupt])) is interrupt
    assert sole(first) is first


def test_sole_skips_the_cancellations_a_failure_caused() -> None:
    caught: list[BaseException] = []

    async def main() -> None:
        async def fail() -> None:
            await trio.sleep(0)
            raise RuntimeError("the failure")

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                nursery.start_soon(fail)
        except BaseException as exc:  # whatever shape this trio gives it
            caught.append(exc)

    trio.run(main)
    assert isinstance(sole(caught[0]), RuntimeError)
