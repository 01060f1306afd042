"""The worker's lease clock: trusted until ttl - margin after the last confirmed send."""

from flux.net.liveness import LeaseClock


def test_trusted_until_the_ttl_after_the_last_confirmed_send():
    now = [100.0]
    clock = LeaseClock(2.0, clock=lambda: now[0])
    assert clock.margin == 0.5
    assert clock.trusted()
    now[0] = 101.4
    assert clock.trusted()
    now[0] = 101.6  # 1.6 s of silence: past ttl - margin
    assert not clock.trusted()
    clock.confirm(101.0)  # a pong for a heartbeat sent at 101.0
    assert clock.trusted() and clock.deadline == 102.5
    clock.confirm(100.5)  # an older confirmation never moves the deadline back
    assert clock.deadline == 102.5
    now[0] = 110.0  # a frozen process woken long after: nothing is trusted
    assert not clock.trusted()
    assert clock.silence() == 9.0


def test_a_frame_within_the_ttl_moves_the_deadline_one_after_a_silence_does_not():
    now = [0.0]
    clock = LeaseClock(4.0, clock=lambda: now[0])
    now[0] = 2.0
    assert clock.heard() and clock.confirmed == 2.0  # a burst of frames keeps it trusted
    now[0] = 4.5
    assert clock.heard() and clock.deadline == 4.5 + 3.0
    now[0] = 30.0  # woken from a freeze: the first frame read may have waited all along
    assert not clock.heard()
    assert clock.confirmed == 4.5
