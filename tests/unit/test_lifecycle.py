"""The app's startup and shutdown hooks: order, failed starts, and the interpreters running them."""

from __future__ import annotations

import asyncio

import pytest

import accompanist as ac

A, B = ac.roles("a", "b")


@ac.choreography("hooked", roles=(A, B))
async def hooked(ch: ac.Choreo, n: ac.Located[int]) -> ac.Located[int]:
    at_b = await ch.comm(A, B, n)
    return await ch.comm(B, A, await ch.locally(B, lambda v: v * 2, at_b))


def make_app(events: list[str], fail: str = "") -> ac.App:
    app = ac.App(hooked)

    def hook(phase: str, name: str) -> ac.language.lifecycle.Hook:
        async def run(role: str) -> None:
            events.append(f"{phase} {name} {role}")
            if f"{name} {role}" == fail:
                raise OSError(f"{name} cannot start at {role}")

        run.__qualname__ = name
        return run

    app.on_startup(hook("start", "first"))
    app.on_startup(hook("start", "second"))
    app.on_shutdown(hook("stop", "first"))
    app.on_shutdown(hook("stop", "second"))
    return app


async def test_startup_in_order_shutdown_in_reverse() -> None:
    events: list[str] = []
    app = make_app(events)
    async with app.lifecycle.running(["a", "b"]):
        events.append("body")
    assert events == [
        "start first a", "start second a", "start first b", "start second b",
        "body",
        "stop second b", "stop first b", "stop second a", "stop first a",
    ]  # fmt: skip


async def test_a_failed_startup_hook_is_a_failed_start_that_releases_everything() -> None:
    events: list[str] = []
    app = make_app(events, fail="second b")
    with pytest.raises(ac.LifecycleError) as caught:
        async with app.lifecycle.running(["a", "b"]):
            events.append("body")  # never runs
    err = caught.value
    assert (err.phase, err.hook, err.role) == ("startup", "second", "b")
    assert isinstance(err.cause, OSError)
    assert str(err) == "startup hook 'second' failed for role 'b': OSError: second cannot start at b"
    # Every shutdown hook ran for both roles that began starting, in reverse.
    assert events == [
        "start first a", "start second a", "start first b", "start second b",
        "stop second b", "stop first b", "stop second a", "stop first a",
    ]  # fmt: skip


async def test_every_shutdown_hook_runs_when_one_fails() -> None:
    events: list[str] = []
    app = ac.App(hooked)

    @app.on_shutdown
    async def last(role: str) -> None:
        events.append(f"last {role}")

    @app.on_shutdown
    async def broken(role: str) -> None:
        raise RuntimeError("cannot close")

    with pytest.raises(ac.LifecycleError, match="shutdown hook 'broken' failed for role 'a'"):
        async with app.lifecycle.running(["a"]):
            pass
    assert events == ["last a"]


async def test_the_body_error_wins_over_a_shutdown_error() -> None:
    app = ac.App(hooked)

    @app.on_shutdown
    async def broken(role: str) -> None:
        raise RuntimeError("cannot close")

    with pytest.raises(KeyError):
        async with app.lifecycle.running(["a"]):
            raise KeyError("the body's own error")


def test_hooks_must_be_async() -> None:
    app = ac.App(hooked)
    with pytest.raises(ac.DefinitionError, match="'sync_hook' must be an 'async def' function"):

        @app.on_startup  # type: ignore[arg-type]
        def sync_hook(role: str) -> None:
            pass

    with pytest.raises(ac.DefinitionError, match="on_shutdown: expected"):
        app.on_shutdown(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("run", [ac.run_central, ac.testing.run_projected], ids=["central", "projected"])
async def test_the_interpreters_run_the_hooks_for_every_role(run: object) -> None:
    events: list[str] = []
    app = make_app(events)
    assert await run(hooked, 21, app=app) == 42  # type: ignore[operator]
    assert events[:4] == ["start first a", "start second a", "start first b", "start second b"]
    assert events[4:] == ["stop second b", "stop first b", "stop second a", "stop first a"]
    events.clear()
    with pytest.raises(ac.LifecycleError):
        await run(hooked, 21, app=make_app(events, fail="first a"))  # type: ignore[operator]
    assert events == ["start first a", "stop second a", "stop first a"]


async def test_an_embedded_sidecar_runs_its_roles_hooks() -> None:
    from accompanist.transport.memory import MemoryNetwork

    events: list[str] = []
    app = make_app(events)
    net = MemoryNetwork()
    cfg = {r: ac.SidecarConfig(role=r, listen=("127.0.0.1", 0), peers={}) for r in ("a", "b")}
    async with (
        ac.Sidecar(cfg["b"], app, transport=net.transport("b")),
        ac.Sidecar(cfg["a"], app, transport=net.transport("a")) as a,
    ):
        assert await a.run("hooked", 5) == 10
        assert sorted(events) == sorted(["start first a", "start second a", "start first b", "start second b"])
    assert events[4:] == ["stop second a", "stop first a", "stop second b", "stop first b"]


async def test_an_embedded_sidecar_whose_hook_fails_does_not_start() -> None:
    from accompanist.transport.memory import MemoryNetwork

    events: list[str] = []
    net = MemoryNetwork()
    sidecar = ac.Sidecar(
        ac.SidecarConfig(role="a", listen=("127.0.0.1", 0), peers={}),
        make_app(events, fail="second a"),
        transport=net.transport("a"),
    )
    with pytest.raises(ac.LifecycleError):
        await sidecar.start()
    assert sidecar.engine is None  # the engine never started: no store or port was opened
    assert events == ["start first a", "start second a", "stop second a", "stop first a"]
    await asyncio.sleep(0)
