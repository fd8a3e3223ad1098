"""Parse the subset of RFC 4506 XDR used by the NDMP definitions in ``protocol/*.x``.

The parser produces plain declarations (consts, enums, structs, unions, typedefs); the
codec compiler turns them into encoders and decoders. Keeping the ``.x`` files as the
single source means a message layout is written exactly once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


class XdrSyntaxError(ValueError):
    """A ``.x`` file does not follow the grammar; names the file and line."""


@dataclass(frozen=True)
class Decl:
    """One declaration: ``TYPE name``, ``TYPE name<max>``, ``TYPE name[n]`` or ``void``."""

    name: str | None            # None for void
    type_name: str | None       # None for void
    array: str | None = None    # None, "var" or "fixed"
    size: int | None = None     # max length for var (None = unbounded), count for fixed


@dataclass
class EnumDef:
    name: str
    members: dict[str, int]


@dataclass
class StructDef:
    name: str
    fields: list[Decl]


@dataclass
class UnionDef:
    name: str
    discriminant: Decl
    arms: list[tuple[list[int], Decl]]          # case values -> arm (Decl with name None = void)
    default: Decl | None = None                 # None: no default arm


@dataclass
class TypedefDef:
    name: str
    decl: Decl


@dataclass
class Spec:
    """Everything one ``.x`` file declares, in declaration order per kind."""

    consts: dict[str, int] = field(default_factory=dict)
    enums: dict[str, EnumDef] = field(default_factory=dict)
    structs: dict[str, StructDef] = field(default_factory=dict)
    unions: dict[str, UnionDef] = field(default_factory=dict)
    typedefs: dict[str, TypedefDef] = field(default_factory=dict)


_TOKEN = re.compile(r"\s*(?:(?P<num>-?0[xX][0-9a-fA-F]+|-?\d+)|(?P<id>[A-Za-z_]\w*)|(?P<p>[{}()<>\[\];:,=*]))")
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_MULTIWORD = {("unsigned", "int"): "unsigned int", ("unsigned", "hyper"): "unsigned hyper",
              ("unsigned", "long"): "u_long", ("unsigned", "short"): "u_short", ("unsigned", "char"): "u_char"}


class _Tokens:
    def __init__(self, text: str, source: str) -> None:
        text = _COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        text = "\n".join("" if line.lstrip().startswith("%") else line for line in text.split("\n"))
        self.items: list[tuple[str, str, int]] = []
        self.source = source
        pos, line = 0, 1
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                rest = text[pos:].strip()
                if not rest:
                    break
                raise XdrSyntaxError(f"{source}:{line + text[pos:].count(chr(10)) - rest.count(chr(10))}: "
                                     f"unexpected text {rest[:20]!r}")
            line += text[pos:m.start(m.lastgroup)].count("\n")
            self.items.append((m.lastgroup, m.group(m.lastgroup), line))
            pos = m.end()
        self.i = 0

    def peek(self) -> str | None:
        return self.items[self.i][1] if self.i < len(self.items) else None

    def next(self) -> str:
        if self.i >= len(self.items):
            raise XdrSyntaxError(f"{self.source}: unexpected end of file")
        tok = self.items[self.i][1]
        self.i += 1
        return tok

    def expect(self, want: str) -> None:
        got = self.next()
        if got != want:
            raise self.error(f"expected {want!r}, got {got!r}")

    def error(self, message: str) -> XdrSyntaxError:
        line = self.items[min(self.i, len(self.items)) - 1][2] if self.items else 0
        return XdrSyntaxError(f"{self.source}:{line}: {message}")


def _value(tok: _Tokens, spec: Spec, local: dict[str, int] | None = None) -> int:
    word = tok.next()
    if re.fullmatch(r"-?(0[xX][0-9a-fA-F]+|\d+)", word):
        return int(word, 0)
    for table in (local or {}, spec.consts, *(e.members for e in spec.enums.values())):
        if word in table:
            return table[word]
    raise tok.error(f"unknown constant {word!r}")


def _type_name(tok: _Tokens) -> str:
    word = tok.next()
    if word in ("struct", "enum", "union"):
        word = tok.next()
    if word == "unsigned" and tok.peek() in ("int", "hyper", "long", "short", "char"):
        word = _MULTIWORD[(word, tok.next())]
    return word


def _decl(tok: _Tokens, spec: Spec) -> Decl:
    if tok.peek() == "void":
        tok.next()
        return Decl(None, None)
    type_name = _type_name(tok)
    if tok.peek() == "*":
        raise tok.error("optional data (*) is not used by NDMP and not supported")
    name = tok.next()
    if tok.peek() == "<":
        tok.next()
        size = None if tok.peek() == ">" else _value(tok, spec)
        tok.expect(">")
        return Decl(name, type_name, "var", size)
    if tok.peek() == "[":
        tok.next()
        size = _value(tok, spec)
        tok.expect("]")
        return Decl(name, type_name, "fixed", size)
    return Decl(name, type_name)


def parse(text: str, source: str = "<xdr>") -> Spec:
    """Parse XDR source text into a :class:`Spec`."""
    tok = _Tokens(text, source)
    spec = Spec()
    while tok.peek() is not None:
        kind = tok.next()
        if kind == "const":
            name = tok.next()
            tok.expect("=")
            spec.consts[name] = _value(tok, spec)
        elif kind == "enum":
            name = tok.next()
            tok.expect("{")
            members: dict[str, int] = {}
            nxt = 0
            while tok.peek() != "}":
                member = tok.next()
                if tok.peek() == "=":
                    tok.next()
                    nxt = _value(tok, spec, members)
                members[member] = nxt
                nxt += 1
                if tok.peek() == ",":
                    tok.next()
            tok.expect("}")
            spec.enums[name] = EnumDef(name, members)
        elif kind == "struct":
            name = tok.next()
            tok.expect("{")
            fields = []
            while tok.peek() != "}":
                fields.append(_decl(tok, spec))
                tok.expect(";")
            tok.expect("}")
            spec.structs[name] = StructDef(name, fields)
        elif kind == "union":
            name = tok.next()
            tok.expect("switch")
            tok.expect("(")
            disc = _decl(tok, spec)
            tok.expect(")")
            tok.expect("{")
            union = UnionDef(name, disc, [])
            while tok.peek() != "}":
                values = []
                is_default = False
                while tok.peek() in ("case", "default"):
                    if tok.next() == "case":
                        values.append(_value(tok, spec))
                    else:
                        is_default = True
                    tok.expect(":")
                arm = _decl(tok, spec)
                tok.expect(";")
                if values:
                    union.arms.append((values, arm))
                if is_default:
                    union.default = arm
            tok.expect("}")
            spec.unions[name] = union
        elif kind == "typedef":
            decl = _decl(tok, spec)
            if decl.name is None:
                raise tok.error("typedef of void")
            spec.typedefs[decl.name] = TypedefDef(decl.name, decl)
        else:
            raise tok.error(f"unexpected {kind!r}")
        tok.expect(";")
    return spec


def parse_file(path: Path) -> Spec:
    """Parse one ``.x`` file."""
    return parse(path.read_text(encoding="utf-8"), str(path))
