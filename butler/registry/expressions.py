"""The ``where`` expression language of registry queries: parsing and compilation to SQL.

An expression such as ``instrument = 'HSC' AND visit IN (100..200:2) AND band != 'y'`` is parsed by
`parse_where` into a small immutable syntax tree, whose column references are listed by
`referenced_identifiers` (so the caller knows which tables to join) and which `compile_where` turns
into a SQLAlchemy Core boolean expression.  Every value in the expression reaches the database as a
bound parameter, never as SQL text.

The language follows daf_butler's: integer, float, string (``'r'`` or ``"r"``, a quote doubled to
embed it) and time (``T'2020-01-01T03:04:05'``, ``T'58000.5/mjd'``, ``T'2020-01-01/utc'``, TAI by
default) literals; identifiers ``element`` or ``element.field``; ``= != <> < <= > >=``, ``AND``,
``OR``, ``NOT`` (keywords in any case; ``NOT`` binds tighter than ``AND``, which binds tighter than
``OR``), ``IN (...)``/``NOT IN (...)`` whose items may be integer ranges ``10..20`` or ``10..20:2``
(both ends inclusive), and ``+ - * / %``.  A bare identifier that is a key of ``bind`` stands for the
bound value.
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import lark
import sqlalchemy
from astropy.time import Time

from ..dimensions import time_to_nsec, unstorable_text
from ..errors import ExpressionSyntaxError, InvalidQueryError

__all__ = [
    "BinaryOp", "ColumnInfo", "Identifier", "InList", "Literal", "LogicalOp", "Node", "RangeLiteral",
    "Resolver", "TimeLiteral", "UnaryOp", "compile_where", "parse_where", "referenced_identifiers",
]  # fmt: skip

_GRAMMAR = r"""
?start: or_expr
?or_expr: and_expr | or_expr OR and_expr -> logical
?and_expr: not_expr | and_expr AND not_expr -> logical
?not_expr: predicate | NOT not_expr -> unary
?predicate: sum
    | sum COMPARE sum -> binary
    | sum IN "(" items ")" -> in_list
    | sum NOT IN "(" items ")" -> in_list
?sum: product | sum PLUS product -> binary | sum MINUS product -> binary
?product: factor | product MUL factor -> binary
?factor: atom | MINUS factor -> unary | PLUS factor -> unary
?atom: INT -> int_literal
    | FLOAT -> float_literal
    | STRING -> string_literal
    | TIME -> time_literal
    | IDENT -> identifier
    | "(" or_expr ")"
items: item ("," item)*
?item: sum | sum DOTDOT sum -> range | sum DOTDOT sum ":" sum -> range

TIME.4: /T'[^']*'/ | /T"[^"]*"/
OR.3: /OR\b/i
AND.3: /AND\b/i
NOT.3: /NOT\b/i
IN.3: /IN\b/i
FLOAT.2: /([0-9]+\.(?!\.)[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+/
INT: /[0-9]+/
STRING: /'(?:[^']|'')*'/ | /"(?:[^"]|"")*"/
IDENT: /[A-Za-z_][A-Za-z_0-9]*(\.[A-Za-z_][A-Za-z_0-9]*)?/
COMPARE: /<=|>=|<>|!=|=|<|>/
PLUS: "+"
MINUS: "-"
MUL: "*" | "/" | "%"
DOTDOT: ".."
%ignore /\s+/
"""

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_KIND_NAMES = {"int": "an integer", "float": "a float", "string": "a string", "time": "a time",
               "bool": "a boolean"}  # fmt: skip
_SQL_TYPES = {"int": sqlalchemy.BigInteger, "float": sqlalchemy.Float, "string": sqlalchemy.String,
              "time": sqlalchemy.BigInteger, "bool": sqlalchemy.Boolean}  # fmt: skip
_COMPARISONS = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
                ">": operator.gt, ">=": operator.ge}  # fmt: skip
_ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
               "%": operator.mod}  # fmt: skip
_LISTS = (list, tuple, set, frozenset)


@dataclass(frozen=True)
class Literal:
    """An integer, float or string literal; ``column`` is the 1-based source column."""

    value: int | float | str
    column: int


@dataclass(frozen=True)
class TimeLiteral:
    """A time literal ``T'...'``, stored as TAI nanoseconds since 1970-01-01 (see `time_to_nsec`)."""

    nsec: int
    text: str
    column: int


@dataclass(frozen=True)
class Identifier:
    """A name ``element`` or ``element.field``: a column, or a bound value when a key of ``bind``."""

    element: str
    field: str | None
    column: int

    @property
    def name(self) -> str:
        """The identifier as written."""
        return self.element if self.field is None else f"{self.element}.{self.field}"


@dataclass(frozen=True)
class UnaryOp:
    """``NOT x``, ``-x`` or ``+x``."""

    op: str
    operand: Node
    column: int


@dataclass(frozen=True)
class BinaryOp:
    """A comparison (``= != < <= > >=``) or arithmetic (``+ - * / %``); ``<>`` is stored as ``!=``."""

    op: str
    lhs: Node
    rhs: Node
    column: int


@dataclass(frozen=True)
class LogicalOp:
    """``AND`` or ``OR`` of two or more operands (chains are flattened)."""

    op: str
    operands: tuple[Node, ...]
    column: int


@dataclass(frozen=True)
class RangeLiteral:
    """An inclusive integer range ``start..stop:stride``, allowed only as an ``IN`` list item."""

    start: int
    stop: int
    stride: int
    column: int


@dataclass(frozen=True)
class InList:
    """``lhs IN (items)`` or, when ``negated``, ``lhs NOT IN (items)``."""

    lhs: Node
    items: tuple[Node, ...]
    negated: bool
    column: int


Node = Literal | TimeLiteral | Identifier | UnaryOp | BinaryOp | LogicalOp | RangeLiteral | InList


class ColumnInfo(NamedTuple):
    """What a `Resolver` returns: the SQL column an identifier names and its value kind."""

    column: sqlalchemy.ColumnElement
    kind: str  # one of "int", "float", "string", "time", "bool"


Resolver = Callable[[str, str | None], ColumnInfo]


class _BuildError(Exception):
    """A semantic syntax error found while building the tree; becomes `ExpressionSyntaxError`."""

    def __init__(self, message: str, column: int):
        super().__init__(message)
        self.message, self.column = message, column


def _parse_time(text: str) -> Time:
    """Parse the inside of ``T'...'``: ``value[/format][/scale]``; no format and a number means MJD."""
    value, *options = text.strip().split("/")
    fmt = scale = None
    for option in (o.strip().lower() for o in options):
        if option in Time.SCALES and scale is None:
            scale = option
        elif option in Time.FORMATS and fmt is None and scale is None:
            fmt = option
        else:
            raise ValueError(f"{option!r} is neither a time format nor a time scale")
    if fmt is None:
        try:
            float(value)
            fmt = "mjd"
        except ValueError:
            pass  # let astropy recognise iso, isot, fits, ...
    return Time(value.strip(), format=fmt, scale=scale or "tai")


def _column(token: lark.Token) -> int:
    return token.start_pos + 1


def _fold_chain(op: str, lhs: Node, rhs: Node, column: int) -> LogicalOp:
    if isinstance(lhs, LogicalOp) and lhs.op == op:
        return LogicalOp(op, (*lhs.operands, rhs), lhs.column)
    return LogicalOp(op, (lhs, rhs), column)


class _Builder(lark.Transformer):
    """Build `Node` trees during the LALR parse (called bottom-up by lark, without recursion)."""

    def int_literal(self, children: list) -> Literal:
        token = children[0]
        digits = token.lstrip("0") or "0"  # counted before int(), which refuses more than 4300 digits
        if len(digits) > len(str(_INT64_MAX)) or int(digits) > _INT64_MAX:
            shown = token if len(token) <= 40 else f"{token[:20]}... ({len(token)} digits)"
            raise _BuildError(f"integer {shown} does not fit in 64 bits", _column(token))
        return Literal(int(digits), _column(token))

    def float_literal(self, children: list) -> Literal:
        value = float(children[0])
        if not math.isfinite(value):
            raise _BuildError(f"number {children[0]} is too large", _column(children[0]))
        return Literal(value, _column(children[0]))

    def string_literal(self, children: list) -> Literal:
        text = str(children[0])
        value = text[1:-1].replace(text[0] * 2, text[0])
        problem = unstorable_text(value)
        if problem:
            raise _BuildError(f"the string {value[:40]!r} {problem}", _column(children[0]))
        return Literal(value, _column(children[0]))

    def time_literal(self, children: list) -> TimeLiteral:
        token = children[0]
        try:
            nsec = time_to_nsec(_parse_time(token[2:-1]))
        except Exception as err:  # astropy raises ValueError, TypeError, ... on malformed input
            reason = str(err).splitlines()[0].rstrip(":")[:120]
            raise _BuildError(
                f"invalid time literal {token} ({reason}); write e.g. T'2020-01-01T03:04:05', "
                "T'2020-01-01/utc' or T'58000.5/mjd'",
                _column(token),
            ) from None
        return TimeLiteral(nsec, token[2:-1], _column(token))

    def identifier(self, children: list) -> Identifier:
        element, _, field = str(children[0]).partition(".")
        return Identifier(element, field or None, _column(children[0]))

    def unary(self, children: list) -> Node:
        token, operand = children
        op = token.upper()
        if op in ("+", "-") and isinstance(operand, Literal) and not isinstance(operand.value, str):
            return Literal(-operand.value if op == "-" else operand.value, _column(token))
        return UnaryOp(op, operand, _column(token))

    def binary(self, children: list) -> BinaryOp:
        lhs, token, rhs = children
        return BinaryOp("!=" if token == "<>" else str(token), lhs, rhs, _column(token))

    def logical(self, children: list) -> LogicalOp:
        lhs, token, rhs = children
        return _fold_chain(token.upper(), lhs, rhs, _column(token))

    def in_list(self, children: list) -> InList:
        lhs, *keywords, items = children
        return InList(lhs, tuple(items.children), len(keywords) == 2, _column(keywords[-1]))

    def range(self, children: list) -> RangeLiteral:
        values = []
        for node in children[:1] + children[2:]:
            if not (isinstance(node, Literal) and isinstance(node.value, int)):
                raise _BuildError("range bounds and stride must be integer literals", node.column)
            values.append(node.value)
        start, stop, stride = values if len(values) == 3 else (*values, 1)
        column = children[0].column
        if stride <= 0:
            raise _BuildError(f"range stride must be positive, not {stride}", children[3].column)
        if start > stop:
            raise _BuildError(f"range {start}..{stop} is empty: its start is after its stop", column)
        return RangeLiteral(start, stop, stride, column)


@functools.cache
def _parser() -> lark.Lark:
    return lark.Lark(_GRAMMAR, parser="lalr", lexer="basic", transformer=_Builder(), maybe_placeholders=False)


def parse_where(text: str) -> Node | None:
    """Parse a ``where`` expression.

    Parameters
    ----------
    text : `str`
        The expression, e.g. ``"instrument = 'HSC' AND visit IN (100..200:2)"``.

    Returns
    -------
    node : `Node` or `None`
        The syntax tree; `None` if ``text`` is empty or whitespace (no constraint).

    Raises
    ------
    ExpressionSyntaxError
        If the text is not a valid expression; ``err.column`` is the 1-based column (character
        offset + 1) of the offending token, or one past the last character for an unexpected end.
    """
    if not text.strip():
        return None
    try:
        return _parser().parse(text)
    except lark.UnexpectedCharacters as err:
        char = text[err.pos_in_stream]
        hint = " (unterminated string?)" if char in "'\"" else ""
        column = err.pos_in_stream + 1
        raise ExpressionSyntaxError(f"unexpected character {char!r}{hint}", text, column) from None
    except lark.UnexpectedToken as err:
        if err.token.type == "$END":
            raise ExpressionSyntaxError("unexpected end of expression", text, len(text.rstrip()) + 1) from None
        raise ExpressionSyntaxError(f"unexpected {err.token.value!r}", text, _column(err.token)) from None
    except _BuildError as err:
        raise ExpressionSyntaxError(err.message, text, err.column) from None


def _children(node: Node) -> tuple[Node, ...]:
    match node:
        case UnaryOp():
            return (node.operand,)
        case BinaryOp():
            return (node.lhs, node.rhs)
        case LogicalOp():
            return node.operands
        case InList():
            return (node.lhs, *node.items)
    return ()


def format_node(node: Node) -> str:
    """Return a where-expression text equivalent to ``node`` (used to quote terms in messages)."""
    if isinstance(node, Literal):
        return "'" + node.value.replace("'", "''") + "'" if isinstance(node.value, str) else repr(node.value)
    if isinstance(node, TimeLiteral):
        return f"T'{node.text}'"
    if isinstance(node, Identifier):
        return node.name
    if isinstance(node, RangeLiteral):
        return f"{node.start}..{node.stop}" + (f":{node.stride}" if node.stride != 1 else "")
    if isinstance(node, UnaryOp):
        return f"NOT {format_node(node.operand)}" if node.op.upper() == "NOT" else f"{node.op}{format_node(node.operand)}"
    if isinstance(node, BinaryOp):
        return f"{format_node(node.lhs)} {node.op} {format_node(node.rhs)}"
    if isinstance(node, LogicalOp):
        return f" {node.op} ".join(
            f"({format_node(o)})" if isinstance(o, LogicalOp) else format_node(o) for o in node.operands
        )
    items = ", ".join(format_node(i) for i in node.items)
    return f"{format_node(node.lhs)} {'NOT IN' if node.negated else 'IN'} ({items})"


def referenced_identifiers(
    node: Node | None, bind: Mapping[str, Any] | None = None
) -> set[tuple[str, str | None]]:
    """List the columns an expression refers to, so the caller can join their tables.

    Parameters
    ----------
    node : `Node` or `None`
        A tree from `parse_where`.
    bind : `~collections.abc.Mapping` [`str`, `~typing.Any`], optional
        Bound values; bare identifiers that are its keys are values, not columns.

    Returns
    -------
    identifiers : `set` [`tuple` [`str`, `str` or `None`]]
        ``(element, field)`` pairs, ``field`` being `None` for an undotted name.
    """
    bind = bind or {}
    found: set[tuple[str, str | None]] = set()
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if isinstance(current, Identifier) and not (current.field is None and current.element in bind):
            found.add((current.element, current.field))
        stack.extend(_children(current))
    return found


@dataclass(frozen=True)
class _Operand:
    """A compiled sub-expression: its SQL, value kind, and how to name it in an error message."""

    sql: sqlalchemy.ColumnElement[Any]
    kind: str
    name: str
    literal: str | None = None  # e.g. "the string 'abc'"; None for columns and computed values

    def describe(self) -> str:
        return self.literal or f"{self.name}, which is {_KIND_NAMES[self.kind]}"


def _where(column: int) -> str:
    return f" (column {column} of the where-expression)"


def _numeric(kind: str) -> bool:
    return kind in ("int", "float")


class _Compiler:
    def __init__(self, resolver: Resolver, bind: Mapping[str, Any]):
        self.resolver, self.bind = resolver, bind

    def value(self, value: Any, kind: str, literal: str) -> _Operand:
        return _Operand(sqlalchemy.literal(value, _SQL_TYPES[kind]()), kind, literal, literal)

    def bound(self, name: str, value: Any, column: int) -> _Operand:
        what = f"the bind value {name} = {value!r}"
        if isinstance(value, bool):
            return self.value(value, "bool", what)
        if isinstance(value, numbers.Integral):
            if not _INT64_MIN <= int(value) <= _INT64_MAX:
                raise InvalidQueryError(f"{what} does not fit in 64 bits{_where(column)}.")
            return self.value(int(value), "int", what)
        if isinstance(value, numbers.Real):
            return self.value(float(value), "float", what)
        if isinstance(value, str):
            problem = unstorable_text(value)
            if problem:
                raise InvalidQueryError(f"bind value {name!r} {problem}{_where(column)}.")
            return self.value(value, "string", what)
        if isinstance(value, Time):
            try:
                return self.value(time_to_nsec(value), "time", what)
            except ValueError as err:
                raise InvalidQueryError(f"{what}: {err}{_where(column)}.") from None
        if isinstance(value, _LISTS):
            raise InvalidQueryError(f"bind value {name!r} is a list, allowed only in IN (...){_where(column)}.")
        raise InvalidQueryError(
            f"bind value {name!r} has type {type(value).__name__}{_where(column)}; "
            "use int, float, str, astropy.time.Time or a list of those."
        )

    def check_comparable(self, lhs: _Operand, rhs: _Operand, column: int, context: str = "") -> None:
        if lhs.kind == rhs.kind or (_numeric(lhs.kind) and _numeric(rhs.kind)):
            return
        subject, other = (rhs, lhs) if lhs.literal and not rhs.literal else (lhs, rhs)
        raise InvalidQueryError(
            f"{subject.name} is {_KIND_NAMES[subject.kind]}; cannot compare it with {other.describe()}"
            f"{context}{_where(column)}."
        )

    def condition(self, node: Node, role: str) -> sqlalchemy.ColumnElement[bool]:
        operand = self.compile(node)
        if operand.kind != "bool":
            what = f"{operand.describe()}{_where(node.column)}"
            raise InvalidQueryError(f"{role} must be a condition such as 'visit = 42', but {what}.")
        return operand.sql

    def compile(self, node: Node) -> _Operand:
        match node:
            case Literal(value=str(value)):
                return self.value(value, "string", f"the string {value!r}")
            case Literal(value=int(value)):
                return self.value(value, "int", f"the integer {value}")
            case Literal(value=value):
                return self.value(value, "float", f"the number {value!r}")
            case TimeLiteral():
                return self.value(node.nsec, "time", f"the time T'{node.text}'")
            case Identifier(field=None) if node.element in self.bind:
                return self.bound(node.element, self.bind[node.element], node.column)
            case Identifier():
                info = self.resolver(node.element, node.field)
                if info.kind not in _KIND_NAMES:
                    raise ValueError(f"resolver gave kind {info.kind!r} for {node.name}; valid: {list(_KIND_NAMES)}")
                return _Operand(info.column, info.kind, node.name)
            case UnaryOp(op="NOT"):
                operand = self.condition(node.operand, "the operand of NOT")
                return _Operand(sqlalchemy.not_(operand), "bool", "NOT")
            case UnaryOp():
                operand = self.compile(node.operand)
                if not _numeric(operand.kind):
                    what = f"{operand.describe()}{_where(node.column)}"
                    raise InvalidQueryError(f"cannot apply unary {node.op!r} to {what}.")
                sql = -operand.sql if node.op == "-" else operand.sql
                return _Operand(sql, operand.kind, f"{node.op}{operand.name}")
            case LogicalOp():
                combine = sqlalchemy.and_ if node.op == "AND" else sqlalchemy.or_
                operands = [self.condition(child, f"each operand of {node.op}") for child in node.operands]
                return _Operand(combine(*operands), "bool", f"({node.op} ...)")
            case BinaryOp(op=op) if op in _COMPARISONS:
                lhs, rhs = self.compile(node.lhs), self.compile(node.rhs)
                self.check_comparable(lhs, rhs, node.column)
                return _Operand(_COMPARISONS[op](lhs.sql, rhs.sql), "bool", f"{lhs.name} {op} {rhs.name}")
            case BinaryOp(op=op):
                lhs, rhs = self.compile(node.lhs), self.compile(node.rhs)
                for side in (lhs, rhs):
                    if not _numeric(side.kind):
                        what = f"{side.describe()}{_where(node.column)}"
                        raise InvalidQueryError(f"cannot apply {op!r} to {what}.")
                kind = "float" if op == "/" or "float" in (lhs.kind, rhs.kind) else "int"
                return _Operand(_ARITHMETIC[op](lhs.sql, rhs.sql), kind, f"({lhs.name} {op} {rhs.name})")
            case InList():
                return self.in_list(node)
        raise InvalidQueryError(f"a range is allowed only inside IN (...){_where(node.column)}.")

    def in_list(self, node: InList) -> _Operand:
        lhs = self.compile(node.lhs)
        terms: list[sqlalchemy.ColumnElement[bool]] = []
        values: list[_Operand] = []
        for item in node.items:
            if isinstance(item, RangeLiteral):
                if lhs.kind != "int":
                    raise InvalidQueryError(
                        f"{lhs.name} is {_KIND_NAMES[lhs.kind]}; the range {item.start}..{item.stop} "
                        f"applies only to integers{_where(item.column)}."
                    )
                term = lhs.sql.between(sqlalchemy.literal(item.start), sqlalchemy.literal(item.stop))
                if item.stride > 1:
                    offset = (lhs.sql - sqlalchemy.literal(item.start)) % sqlalchemy.literal(item.stride)
                    term = sqlalchemy.and_(term, offset == 0)
                terms.append(term)
            elif isinstance(item, Identifier) and not item.field and isinstance(self.bind.get(item.element), _LISTS):
                values.extend(self.bound(item.element, v, item.column) for v in self.bind[item.element])
            else:
                values.append(self.compile(item))
        for value in values:
            self.check_comparable(lhs, value, node.column, " in its IN list")
        if values:
            terms.append(lhs.sql.in_([value.sql for value in values]))
        result = sqlalchemy.or_(*terms) if terms else sqlalchemy.false()
        return _Operand(sqlalchemy.not_(result) if node.negated else result, "bool", "IN")


def compile_where(
    node: Node | None, resolver: Resolver, bind: Mapping[str, Any] | None = None
) -> sqlalchemy.ColumnElement[bool] | None:
    """Compile a parsed ``where`` expression to a SQLAlchemy boolean expression.

    Parameters
    ----------
    node : `Node` or `None`
        A tree from `parse_where`.
    resolver : `Resolver`
        Called as ``resolver(element, field)`` for each identifier that is not a bind name; returns
        the `ColumnInfo` it names, or raises `InvalidQueryError` for an unknown name.
    bind : `~collections.abc.Mapping` [`str`, `~typing.Any`], optional
        Values for bare identifiers: `int`, `float`, `str`, `bool`, `astropy.time.Time`, or (only
        inside ``IN (...)``, where it is expanded) a list, tuple or set of those.

    Returns
    -------
    condition : `sqlalchemy.sql.ColumnElement` [`bool`] or `None`
        The condition, all values as bound parameters; `None` when ``node`` is `None`.  An ``IN``
        with no values (an empty bound list) is `sqlalchemy.false` (``NOT IN``: true).

    Raises
    ------
    InvalidQueryError
        If values of different kinds are compared (e.g. an integer column with a string), a range
        is applied to a non-integer, a bind value has an unsupported type, the expression is not a
        condition, or the resolver rejects a name.
    """
    if node is None:
        return None
    compiler = _Compiler(resolver, bind or {})
    try:
        return compiler.condition(node, "the where-expression")
    except RecursionError:
        raise InvalidQueryError("the where-expression is nested too deeply to compile.") from None
