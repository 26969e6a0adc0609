"""service/auth_throttle.py: failed authentications counted per address, in bounded memory."""

from __future__ import annotations

from service.auth_throttle import FailureThrottle


def test_beyond_the_limit_an_address_is_held_off_until_its_window_ends() -> None:
    throttle = FailureThrottle(3, 60.0)
    for second in range(3):
        assert throttle.retry_after("198.51.100.7", now=100.0 + second) is None
        throttle.failed("198.51.100.7", now=100.0 + second)
    assert throttle.retry_after("198.51.100.7", now=103.0) == 57  # the window began at the first failure
    assert throttle.retry_after("198.51.100.8", now=103.0) is None
    assert throttle.retry_after("198.51.100.7", now=159.5) == 1
    assert throttle.retry_after("198.51.100.7", now=160.0) is None
    throttle.failed("198.51.100.7", now=160.0)  # a new window, counted from 1
    assert throttle.retry_after("198.51.100.7", now=160.0) is None


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() -> None:
    throttle = FailureThrottle(2, 60.0)
    throttle.failed("2001:db8:1:2::1", now=0.0)
    throttle.failed("2001:db8:1:2:ffff::9", now=0.0)  # the same /64: one host's block
    assert throttle.retry_after("2001:db8:1:2::abcd", now=1.0) is not None
    assert throttle.retry_after("2001:db8:1:3::1", now=1.0) is None
    throttle.failed("::ffff:192.0.2.1", now=0.0)
    throttle.failed("192.0.2.1", now=0.0)
    assert throttle.retry_after("192.0.2.1", now=1.0) is not None


def test_memory_is_bounded_and_expired_windows_go_first() -> None:
    throttle = FailureThrottle(1, 10.0, max_addresses=100)
    for index in range(100):
        throttle.failed(f"10.0.{index // 256}.{index % 256}", now=float(index) / 100)
    throttle.failed("192.0.2.1", now=20.0)  # every window before has expired: all forgotten
    assert len(throttle) == 1
    for index in range(1000):
        throttle.failed(f"10.1.{index // 256}.{index % 256}", now=21.0)
    assert len(throttle) == 100


def test_a_limit_of_zero_is_off_and_an_unknown_address_is_not_counted() -> None:
    off = FailureThrottle(0, 60.0)
    for _ in range(100):
        off.failed("198.51.100.7", now=0.0)
    assert off.retry_after("198.51.100.7", now=1.0) is None and len(off) == 0
    on = FailureThrottle(1, 60.0)
    on.failed(None, now=0.0)
    assert on.retry_after(None, now=0.0) is None and len(on) == 0
