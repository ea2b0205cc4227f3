"""Random choreographies for the model test: an AST drawn from a seed, rendered as Python.

A program is a tree of operations over 2-4 roles. It is rendered as the readable source of a
module defining ``define(tx, run_tx)``, which returns the choreography; the source is what a
failure report prints, and what runs (``exec``), so the two cannot differ.

Every role keeps an accumulator ``acc[i]`` located at it. Operations: local arithmetic,
effects on the fake service (keyed by the step key or by a ``ch.uuid`` drawn just before),
saga transactions (named in the body through the closure variable ``tx``, or passed to the
helper coroutine ``run_tx``, which the body receives as an argument and so never names as a
global), comm and multicast, select, broadcast + if, cond with and without ``among``,
enclaves, loops, long bursts of comms, and at most one business failure (a commit raising
``ac.Abort`` or a local step raising). The program ends by gathering some accumulators at the
initiator.
"""

from __future__ import annotations

import linecache
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import accompanist as ac

__all__ = ["Program", "build", "draw_program", "render", "transactions_of"]

M = 1_000_003  # keeps numbers small however long the program


# -- the AST -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Local:
    role: int
    label: str
    op: str
    k: int


@dataclass(frozen=True)
class Effect:
    """A call to the service, idempotent by the step key (``step``) or a drawn uuid (``uuid``)."""

    role: int
    label: str
    key: str


@dataclass(frozen=True)
class Boom:
    """A local step that raises: a business failure."""

    role: int
    label: str


@dataclass(frozen=True)
class Tx:
    role: int
    label: str
    via: str  # direct (ch.transaction) | helper (run_tx)
    abort: bool = False  # the commit raises ac.Abort (a business failure)
    flaky: bool = False  # the first commit attempt raises ConnectionError (retried)
    flaky_undo: bool = False  # the first compensation attempt raises (retried)
    decorated: bool = False  # made with @ac.transaction rather than ac.Transaction(...)


@dataclass(frozen=True)
class Comm:
    src: int
    dsts: tuple[int, ...]
    label: str


@dataclass(frozen=True)
class Select:
    src: int
    dsts: tuple[int, ...]
    label: str


@dataclass(frozen=True)
class Branch:
    """``broadcast`` a parity, then an ordinary ``if`` on the plain value."""

    src: int
    label: str
    then: tuple[Any, ...]
    orelse: tuple[Any, ...]


@dataclass(frozen=True)
class Cond:
    src: int
    among: tuple[int, ...] | None
    label: str
    then: tuple[Any, ...]
    orelse: tuple[Any, ...]


@dataclass(frozen=True)
class Enclave:
    members: tuple[int, ...]
    label: str
    body: tuple[Any, ...]


@dataclass(frozen=True)
class Loop:
    count: int
    label: str
    body: tuple[Any, ...]


@dataclass(frozen=True)
class Program:
    """A random choreography.

    Attributes:
        n: number of roles (``r0`` is the initiator).
        ops: the body.
        prologue: the initiator first multicasts its input to every role the body uses, so
            every role starts by receiving; without it some roles speak first.
        gather: roles whose accumulator is sent to the initiator at the end.
    """

    n: int
    ops: tuple[Any, ...]
    prologue: bool
    gather: tuple[int, ...]
    features: frozenset[str] = field(default_factory=frozenset)

    @property
    def role_names(self) -> tuple[str, ...]:
        return tuple(f"r{i}" for i in range(self.n))


def walk(ops: tuple[Any, ...]) -> list[Any]:
    """Every operation of a block, nested ones included, in source order."""
    out: list[Any] = []
    for op in ops:
        out.append(op)
        for nested in ("then", "orelse", "body"):
            out.extend(walk(getattr(op, nested, ())))
    return out


def roles_used(ops: tuple[Any, ...]) -> set[int]:
    used: set[int] = set()
    for op in walk(ops):
        for attr in ("role", "src"):
            if hasattr(op, attr):
                used.add(getattr(op, attr))
        for attr in ("dsts", "members"):
            used.update(getattr(op, attr, ()))
        used.update(getattr(op, "among", None) or ())
    return used


# -- drawing -------------------------------------------------------------------------------------
class _Drawer:
    def __init__(self, rng: random.Random, n: int, tx_style: str, allow_long: bool) -> None:
        self.rng = rng
        self.n = n
        self.tx_style = tx_style
        self.allow_long = allow_long
        self.counter = 0

    def label(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def subset(self, pool: tuple[int, ...], min_size: int = 1) -> tuple[int, ...]:
        size = self.rng.randint(min_size, len(pool))
        return tuple(sorted(self.rng.sample(pool, size)))

    def tx(self, role: int) -> Tx:
        rng = self.rng
        via = self.tx_style if self.tx_style != "mixed" else rng.choice(["direct", "helper"])
        return Tx(
            role,
            self.label("t"),
            via,
            flaky=rng.random() < 0.15,
            flaky_undo=rng.random() < 0.2,
            decorated=rng.random() < 0.5,
        )

    def op(self, census: tuple[int, ...], depth: int, top: bool) -> Any:
        rng = self.rng
        kinds = ["local"] * 2 + ["effect"] * 2 + ["tx"] * 2
        if len(census) >= 2:
            kinds += ["comm"] * 4 + ["select"]
            if depth > 0:
                kinds += ["branch", "cond", "enclave", "loop"]
            if top and self.allow_long:
                kinds += ["burst"]
        kind = rng.choice(kinds)
        role = rng.choice(census)
        others = tuple(r for r in census if r != role)
        if kind == "local":
            return Local(role, self.label("l"), rng.choice(["add", "mul", "sub", "neg", "mod"]), rng.randint(-9, 9))
        if kind == "effect":
            return Effect(role, self.label("e"), rng.choice(["step", "uuid"]))
        if kind == "tx":
            return self.tx(role)
        if kind == "comm":
            dsts = (rng.choice(others),) if rng.random() < 0.7 else self.subset(others)
            return Comm(role, dsts, self.label("m"))
        if kind == "select":
            return Select(role, self.subset(others), self.label("s"))
        if kind == "burst":  # more messages in a row than the receiver's buffer holds
            comm = Comm(role, (rng.choice(others),), self.label("m"))
            return Loop(rng.randint(9, 20), self.label("i"), (comm,))
        if kind == "branch":
            return Branch(role, self.label("b"), self.block(census, depth - 1), self.block(census, depth - 1))
        if kind == "cond":
            among = None if rng.random() < 0.4 else self.subset(others)
            inner = census if among is None else tuple(sorted({role, *among}))
            return Cond(role, among, self.label("c"), self.block(inner, depth - 1), self.block(inner, depth - 1))
        if kind == "enclave":
            members = self.subset(census, min_size=min(2, len(census)))
            return Enclave(members, self.label("n"), self.block(members, depth - 1, min_ops=1))
        return Loop(rng.randint(2, 3), self.label("i"), self.block(census, depth - 1, min_ops=1))

    def block(self, census: tuple[int, ...], depth: int, min_ops: int = 0, max_ops: int = 3) -> tuple[Any, ...]:
        return tuple(self.op(census, depth, top=False) for _ in range(self.rng.randint(min_ops, max_ops)))


def _insert_somewhere(rng: random.Random, ops: tuple[Any, ...], new: Any) -> tuple[Any, ...]:
    """Insert ``new`` at the top level, or now and then inside a top-level loop or branch."""
    spots = [i for i, op in enumerate(ops) if isinstance(op, (Loop, Branch))]
    if spots and rng.random() < 0.3:
        i = rng.choice(spots)
        op = ops[i]
        if isinstance(op, Loop):
            body = list(op.body)
            body.insert(rng.randint(0, len(body)), new)
            changed: Any = Loop(op.count, op.label, tuple(body))
        else:
            then = list(op.then)
            then.insert(rng.randint(0, len(then)), new)
            changed = Branch(op.src, op.label, tuple(then), op.orelse)
        return (*ops[:i], changed, *ops[i + 1 :])
    at = rng.randint(0, len(ops))
    return (*ops[:at], new, *ops[at:])


def draw_program(rng: random.Random, *, failure: str | None = None, plain: bool = False) -> Program:
    """A random program.

    Args:
        rng: the source of every choice.
        failure: ``abort`` (a commit raises ``ac.Abort``), ``boom`` (a local step raises), or None.
        plain: draw only what today's engine is known to handle (for the harness's own check):
            a prologue, transactions named in the body, no bursts.
    """
    n = rng.randint(2, 4)
    census = tuple(range(n))
    tx_style = "direct" if plain else rng.choice(["direct", "helper", "mixed", "mixed"])
    allow_long = not plain and rng.random() < 0.35
    drawer = _Drawer(rng, n, tx_style, allow_long)
    ops = tuple(drawer.op(census, 2, top=True) for _ in range(rng.randint(3, 8)))
    if failure is not None:
        role = rng.choice(census)
        bad: Any = Tx(role, drawer.label("t"), tx_style if tx_style != "mixed" else "direct", abort=True)
        if failure == "boom":
            bad = Boom(role, drawer.label("x"))
        ops = _insert_somewhere(rng, ops, bad)
    prologue = plain or rng.random() < 0.75
    used = sorted(roles_used(ops) | {0})
    gather = tuple(r for r in used if r != 0 and rng.random() < 0.6)
    features = set()
    if not prologue:
        features.add("speak-first")
    if allow_long and any(isinstance(op, Loop) and op.count > 8 for op in walk(ops)):
        features.add("long")
    txs = [op for op in walk(ops) if isinstance(op, Tx)]
    if txs and all(t.via == "helper" for t in txs):
        features.add("tx-only-via-helper")
    elif any(t.via == "helper" for t in txs):
        features.add("tx-via-helper")
    if any(isinstance(op, Effect) and op.key == "uuid" for op in walk(ops)):
        features.add("uuid-key")
    if failure:
        features.add(f"failure:{failure}")
    return Program(n, ops, prologue, gather, frozenset(features))


# -- rendering -----------------------------------------------------------------------------------
class _Renderer:
    def __init__(self, program: Program) -> None:
        self.program = program
        self.lines: list[str] = []
        self.loops: list[str] = []

    def emit(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    def iters(self) -> str:
        return "(" + "".join(f"{v}, " for v in self.loops).rstrip(" ") + ")"

    def ensure(self, r: int, indent: int, defined: set[int]) -> None:
        if r not in defined:
            self.emit(indent, f"acc[{r}] = await ch.locally(R{r}, start({r}))")
            defined.add(r)

    def block(self, ops: tuple[Any, ...], indent: int, defined: set[int]) -> None:
        if not ops:
            self.emit(indent, "pass")
        for op in ops:
            self.op(op, indent, defined)

    def op(self, op: Any, ind: int, defined: set[int]) -> None:
        if isinstance(op, Local):
            self.ensure(op.role, ind, defined)
            fn = f'step("{op.label}", "{op.op}", {op.k})'
            self.emit(ind, f"acc[{op.role}] = await ch.locally(R{op.role}, {fn}, acc[{op.role}])")
        elif isinstance(op, Effect):
            self.ensure(op.role, ind, defined)
            fn = f'effect("{op.label}", {op.role}, {self.iters()})'
            if op.key == "uuid":
                self.emit(ind, f"u_{op.label} = await ch.uuid(R{op.role})")
                self.emit(ind, f"acc[{op.role}] = await ch.locally(R{op.role}, {fn}, acc[{op.role}], u_{op.label})")
            else:
                self.emit(ind, f"acc[{op.role}] = await ch.locally(R{op.role}, {fn}, acc[{op.role}])")
        elif isinstance(op, Boom):
            self.ensure(op.role, ind, defined)
            self.emit(ind, f'acc[{op.role}] = await ch.locally(R{op.role}, boom("{op.label}"), acc[{op.role}])')
        elif isinstance(op, Tx):
            self.ensure(op.role, ind, defined)
            r = op.role
            if op.via == "helper":
                self.emit(ind, f'acc[{r}] = await run_tx(ch, R{r}, tx["{op.label}"], acc[{r}])')
            else:
                self.emit(ind, f'acc[{r}] = await ch.transaction(R{r}, tx["{op.label}"], acc[{r}])')
        elif isinstance(op, Comm):
            self.ensure(op.src, ind, defined)
            to = f"R{op.dsts[0]}" if len(op.dsts) == 1 else "[" + ", ".join(f"R{d}" for d in op.dsts) + "]"
            self.emit(ind, f"{op.label} = await ch.comm(R{op.src}, {to}, acc[{op.src}])")
            for d in op.dsts:
                if d in defined:
                    self.emit(ind, f"acc[{d}] = await ch.locally(R{d}, absorb, acc[{d}], {op.label})")
                else:
                    self.emit(ind, f"acc[{d}] = {op.label}")
                    defined.add(d)
        elif isinstance(op, Select):
            self.ensure(op.src, ind, defined)
            to = "[" + ", ".join(f"R{d}" for d in op.dsts) + "]"
            self.emit(
                ind,
                f"{op.label} = await ch.select(R{op.src}, {to}, await ch.locally(R{op.src}, label_of, acc[{op.src}]))",
            )
            for d in op.dsts:
                if d in defined:
                    self.emit(ind, f"acc[{d}] = await ch.locally(R{d}, absorb_label, acc[{d}], {op.label})")
                else:
                    self.emit(ind, f"acc[{d}] = await ch.locally(R{d}, from_label, {op.label})")
                    defined.add(d)
        elif isinstance(op, Branch):
            self.ensure(op.src, ind, defined)
            self.emit(ind, f"if await ch.broadcast(R{op.src}, await ch.locally(R{op.src}, parity, acc[{op.src}])):")
            then, orelse = set(defined), set(defined)
            self.block(op.then, ind + 1, then)
            self.emit(ind, "else:")
            self.block(op.orelse, ind + 1, orelse)
            defined |= then & orelse
        elif isinstance(op, Cond):
            self.ensure(op.src, ind, defined)
            self.emit(ind, f"async def {op.label}(ch, even):")
            then, orelse = set(defined), set(defined)
            self.emit(ind + 1, "if even:")
            self.block(op.then, ind + 2, then)
            self.emit(ind + 1, "else:")
            self.block(op.orelse, ind + 2, orelse)
            flag = f"await ch.locally(R{op.src}, parity, acc[{op.src}])"
            if op.among is None:
                self.emit(ind, f"await ch.cond(R{op.src}, {flag}, {op.label})")
                defined |= then & orelse  # every role ran it
            else:
                among = ", ".join(f"R{a}" for a in op.among)
                self.emit(ind, f"await ch.cond(R{op.src}, {flag}, {op.label}, among=[{among}])")
        elif isinstance(op, Enclave):
            self.emit(ind, f"async def {op.label}(ch):")
            self.block(op.body, ind + 1, set(defined))  # assigned only at members: not defined outside
            members = ", ".join(f"R{m}" for m in op.members)
            self.emit(ind, f"await ch.enclave([{members}], {op.label})")
        elif isinstance(op, Loop):
            self.emit(ind, f"for {op.label} in range({op.count}):")
            self.loops.append(op.label)
            inner = set(defined)
            self.block(op.body, ind + 1, inner)
            self.loops.pop()
            defined |= inner
        else:  # pragma: no cover
            raise AssertionError(op)


def render(program: Program, *, drift_role: int | None = None) -> str:
    """The program as the source of a module defining ``define(tx, run_tx)``.

    ``drift_role`` renders the code changed by a deployment: one more local step at that
    role, before everything else (same choreography name and version, other steps).
    """
    r = _Renderer(program)
    roles = ", ".join(f"R{i}" for i in range(program.n))
    r.emit(0, "def define(tx, run_tx):")
    r.emit(1, f'@ac.choreography("model", roles=({roles},), version=1)')
    r.emit(1, "async def model(ch, x):")
    r.emit(2, "acc = {0: x}")
    if drift_role is not None:
        r.emit(2, f"await ch.locally(R{drift_role}, drift)  # the deployed change")
    defined = {0}
    if program.prologue:
        used = sorted(roles_used(program.ops) - {0})
        if used:
            to = "[" + ", ".join(f"R{u}" for u in used) + "]"
            r.emit(2, f"hello = await ch.comm(R0, {to}, acc[0])")
            for u in used:
                r.emit(2, f"acc[{u}] = hello")
            defined.update(used)
    r.block(program.ops, 2, defined)
    parts = []
    for g in program.gather:
        if g in defined:
            r.emit(2, f"home{g} = await ch.comm(R{g}, R0, acc[{g}])")
            parts.append(f"home{g}")
    r.emit(2, f"return await ch.locally(R0, combine, acc[0]{''.join(', ' + p for p in parts)})")
    r.emit(1, "return model")
    return "\n".join(r.lines) + "\n"


def transactions_of(program: Program) -> list[Tx]:
    return [op for op in walk(program.ops) if isinstance(op, Tx)]


def build(
    program: Program,
    env: dict[str, Any],
    make_tx: Callable[[Tx], ac.Transaction],
    run_tx: Callable[..., Any],
    *,
    drift_role: int | None = None,
    filename: str = "<model>",
) -> tuple[ac.Choreography, str]:
    """Execute the rendered program in ``env`` (the local functions bound to one ledger).

    Returns the choreography and its source.
    """
    source = render(program, drift_role=drift_role)
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {"ac": ac, **{f"R{i}": role for i, role in enumerate(ac.roles(*program.role_names))}}
    namespace.update(env)
    exec(compile(source, filename, "exec"), namespace)  # our own generated test program
    txs = {t.label: make_tx(t) for t in transactions_of(program)}
    return namespace["define"](txs, run_tx), source


def span_of(program: Program, durable: bool) -> int:
    """Roughly how many progress points (store commits, service calls) one session makes."""

    def size(ops: tuple[Any, ...], census: int) -> float:
        total = 0.0
        for op in ops:
            if isinstance(op, (Comm, Select)):
                total += (3 if durable else 0.2) * len(op.dsts)
            elif isinstance(op, (Effect, Tx)):
                total += 2 if durable else 1
            elif isinstance(op, (Local, Boom)):
                total += 0.3
            elif isinstance(op, (Branch, Cond)):
                among = getattr(op, "among", None)
                told = census - 1 if among is None else len(among)
                total += (3 if durable else 0.2) * told + (size(op.then, census) + size(op.orelse, census)) / 2
            elif isinstance(op, Enclave):
                total += size(op.body, len(op.members))
            elif isinstance(op, Loop):
                total += op.count * size(op.body, census)
        return total

    ends = (3 if durable else 1) * program.n + (3 if durable else 0.2) * (len(program.gather) + program.n)
    return max(4, int(size(program.ops, program.n) + ends))
