"""The serving clock's timers on the server's own event loop (uvloop), whose timers round to whole
milliseconds: a timer set here never fires before its time (uvloop's `call_later(0.0003)` fires
at once), cancelled timers never fire, and a timer already due runs on the loop, not inside the
call that set it."""

from __future__ import annotations

import asyncio

import uvloop

from parity.serving import clock


def test_uvloop_alone_fires_sub_millisecond_timers_early():
    """Why the clock exists: the loop's own timer for 300 us runs well before 300 us have passed."""

    async def main():
        loop = asyncio.get_running_loop()
        early = 0
        for _ in range(20):
            fut = loop.create_future()
            start = clock.now()
            loop.call_later(0.0003, lambda f=fut: f.set_result(clock.now()))
            early += (await fut) - start < 0.0003
        return early

    assert uvloop.run(main()) > 0


def test_timers_never_fire_before_their_time_sub_millisecond_or_not():
    delays = [0.00005, 0.0001, 0.0003, 0.0006, 0.0012, 0.0025, 0.006]

    async def main():
        loop = asyncio.get_running_loop()
        fired = []
        for _ in range(5):
            for d in delays:
                fut = loop.create_future()
                when = clock.now() + d
                clock.call_at(loop, when, lambda f=fut, w=when: f.set_result((w, clock.now())))
                fired.append(await fut)
        return fired

    fired = uvloop.run(main())
    assert len(fired) == 35
    assert all(at >= when for when, at in fired), [(at - when) * 1e6 for when, at in fired if at < when]


def test_timers_fire_in_order_and_cancelled_ones_never():
    async def main():
        loop = asyncio.get_running_loop()
        order = []
        base = clock.now()
        timers = {d: clock.call_at(loop, base + d, order.append, d) for d in (0.0009, 0.0002, 0.004, 0.0005, 0.0031)}
        timers[0.0005].cancel()
        timers[0.004].cancel()  # still on the loop's coarse timer
        last = loop.create_future()
        clock.call_at(loop, base + 0.006, last.set_result, None)  # after every timer above
        await asyncio.wait_for(last, 5)
        return order

    assert uvloop.run(main()) == [0.0002, 0.0009, 0.0031]


def test_a_timer_already_due_runs_on_the_loop_not_inside_call_at():
    async def main():
        loop = asyncio.get_running_loop()
        ran = []
        clock.call_at(loop, clock.now() - 1.0, ran.append, "late")
        assert ran == []  # not from inside call_at
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return ran

    assert uvloop.run(main()) == ["late"]
