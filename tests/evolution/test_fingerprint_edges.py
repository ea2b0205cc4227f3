"""What a choreography's fingerprint covers: lambdas, nested functions, closures, partials,
defaults, helpers in dicts, and step functions kept on the app's classes."""

from __future__ import annotations

import accompanist as ac
from accompanist.language.fingerprint import code_facts

A, B = ac.roles("a", "b")


def make(body):  # a choreography whose only difference is the local function ``body``
    async def chor(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        at_b = await ch.comm(A, B, x)
        return await ch.comm(B, A, await ch.locally(B, body, at_b))

    return chor


def test_a_lambda_in_the_choreography_counts() -> None:
    async def one(ch, x):
        return await ch.locally(A, lambda v: v + 1, x)

    async def two(ch, x):
        return await ch.locally(A, lambda v: v * 2, x)

    assert code_facts(one).fingerprint != code_facts(two).fingerprint


def test_a_nested_function_counts() -> None:
    async def one(ch, x):
        def f(v):
            return v + 1

        return await ch.locally(A, f, x)

    async def two(ch, x):
        def f(v):
            return v * 2

        return await ch.locally(A, f, x)

    assert code_facts(one).fingerprint != code_facts(two).fingerprint


def _plus(v):
    return v + 1


def _times(v):
    return v * 2


HELPERS_ONE = {"f": _plus}
HELPERS_TWO = {"f": _times}


def test_a_helper_passed_through_a_closure_counts() -> None:
    """The same choreography code over two different helpers (a factory): the code a replay
    runs differs, so should the fingerprint."""
    assert code_facts(make(_plus)).fingerprint != code_facts(make(_times)).fingerprint


def test_a_helper_reached_through_a_global_dict_counts() -> None:
    async def one(ch, x):
        return await ch.locally(A, HELPERS_ONE["f"], x)

    async def two(ch, x):
        return await ch.locally(A, HELPERS_TWO["f"], x)

    # names differ so this holds trivially; the real question is the next test
    assert code_facts(one).fingerprint != code_facts(two).fingerprint


_CLASS_SOURCE = """
class Steps:
    @staticmethod
    def bump(v):
        return {body}

    def method(self, v):
        return {body}


async def via_static(ch, x):
    return await ch.locally(A, Steps.bump, x)


async def via_method(ch, x):
    return await ch.locally(A, Steps().method, x)
"""


def _load(body: str) -> dict:
    namespace: dict = {"__name__": "fp_classes", "A": A}
    exec(_CLASS_SOURCE.format(body=body), namespace)
    return namespace


def test_a_helper_that_is_a_static_method_or_method_counts() -> None:
    """A step function kept on a class (a common way to group helpers): changing its body
    changes what a replay runs, so it should change the fingerprint (and warn at start)."""
    one, two = _load("v + 1"), _load("v * 2")
    assert code_facts(one["via_static"]).fingerprint != code_facts(two["via_static"]).fingerprint
    assert code_facts(one["via_method"]).fingerprint != code_facts(two["via_method"]).fingerprint
