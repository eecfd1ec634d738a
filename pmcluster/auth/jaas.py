"""JAAS login configuration files (`java.security.auth.login.config`), as Storm uses them.

The grammar is Java's: sections `Name { module.Class flag key=value ... ; ... };`, `//` and
`/* */` comments, values quoted ("...", with backslash escapes) or bare words. Storm documents
`PacemakerDigest { username="..." password="..."; };` without module and flag, which Java's own
parser rejects; pmcluster accepts it. No PyPI package parses these files, hence this module.

Errors are `JaasError` (a `ConfigError`) naming the file, the line and the section.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pmcluster.errors import ConfigError

__all__ = [
    "JAAS_KEY",
    "DigestCredentials",
    "JaasConfig",
    "JaasEntry",
    "JaasError",
    "JaasSection",
    "KerberosClientCredentials",
    "KerberosServerCredentials",
    "load_jaas",
    "parse_jaas",
    "short_name",
]

JAAS_KEY = "java.security.auth.login.config"
FLAGS = ("required", "requisite", "sufficient", "optional")


class JaasError(ConfigError):
    """A JAAS file cannot be read, does not parse, or lacks a section or option we need."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(JAAS_KEY, f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class JaasEntry:
    """One login module: `module flag options;` (module and flag None in Storm's short form)."""

    module: str | None
    flag: str | None
    options: Mapping[str, str]
    line: int


@dataclass(frozen=True, slots=True)
class JaasSection:
    name: str
    entries: tuple[JaasEntry, ...]
    line: int
    path: str = "<string>"

    def get(self, key: str) -> str | None:
        """The first entry's value of option `key` (options are case-sensitive, as in Java)."""
        for entry in self.entries:
            if key in entry.options:
                return entry.options[key]
        return None

    def require(self, key: str) -> str:
        value = self.get(key)
        if not value:
            raise JaasError(
                f"{self.path}:{self.line}", f"section {self.name}: option {key!r} is required"
            )
        return value


def short_name(principal: str) -> str:
    """Kerberos short name: the text before the first `/` or `@` (Storm's rule)."""
    return principal.split("/", 1)[0].split("@", 1)[0]


@dataclass(frozen=True, slots=True)
class DigestCredentials:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class KerberosServerCredentials:
    keytab: str
    principal: str


@dataclass(frozen=True, slots=True)
class KerberosClientCredentials:
    keytab: str | None
    principal: str | None
    service_name: str


@dataclass(frozen=True)
class JaasConfig:
    """Every section of one JAAS file, by name."""

    path: str
    sections: Mapping[str, JaasSection]

    def section(self, name: str) -> JaasSection:
        found = self.sections.get(name)
        if found is None:
            have = ", ".join(sorted(self.sections)) or "none"
            raise JaasError(self.path, f"no section {name!r} (sections: {have})")
        return found

    def digest(self) -> DigestCredentials:
        """`PacemakerDigest`: the one user name and password of DIGEST authentication."""
        section = self.section("PacemakerDigest")
        return DigestCredentials(section.require("username"), section.require("password"))

    def kerberos_server(self, host: str | None = None) -> KerberosServerCredentials:
        """`PacemakerServer`: the node's keytab and service principal. As in Hadoop, `_HOST`
        in the principal stands for the node's host (`pacemaker.host`), so every node of a
        cluster can share one JAAS file (`pacemaker/_HOST@REALM`)."""
        section = self.section("PacemakerServer")
        principal = section.require("principal")
        if host is not None:
            principal = principal.replace("_HOST", host.lower())
        return KerberosServerCredentials(section.require("keyTab"), principal)

    def kerberos_client(self) -> KerberosClientCredentials:
        """`PacemakerClient`: the reader's keytab and principal (either may come from the
        default credential cache) and the server's service name."""
        section = self.section("PacemakerClient")
        return KerberosClientCredentials(
            section.get("keyTab") or None,
            section.get("principal") or None,
            section.require("serviceName"),
        )


# --- tokenizer ---------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<line_comment>//[^\n]*)
  | (?P<block_comment>/\*.*?\*/)
  | (?P<open_comment>/\*)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<open_string>")
  | (?P<punct>[{};=])
  | (?P<word>[^\s{};="]+)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # "word", "string", or the punctuation character itself
    text: str
    line: int


def _tokens(text: str, path: str) -> Iterator[_Tok]:
    pos, line = 0, 1
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        assert match is not None  # every character is covered by some alternative
        kind = match.lastgroup or ""
        value = match.group()
        if kind == "open_comment":
            raise JaasError(f"{path}:{line}", "unterminated /* comment")
        if kind == "open_string":
            raise JaasError(f"{path}:{line}", "unterminated quoted value")
        if kind == "string":
            yield _Tok("string", re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.DOTALL), line)
        elif kind == "punct":
            yield _Tok(value, value, line)
        elif kind == "word":
            yield _Tok("word", value, line)
        line += value.count("\n")
        pos = match.end()


# --- parser ------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.toks = list(_tokens(text, path))
        self.i = 0
        self.section = ""

    def _where(self, tok: _Tok | None) -> str:
        line = tok.line if tok is not None else (self.toks[-1].line if self.toks else 1)
        return f"{self.path}:{line}"

    def _fail(self, tok: _Tok | None, message: str) -> JaasError:
        within = f"section {self.section}: " if self.section else ""
        found = f" (found {tok.text!r})" if tok is not None else " (found end of file)"
        return JaasError(self._where(tok), within + message + found)

    def peek(self, ahead: int = 0) -> _Tok | None:
        j = self.i + ahead
        return self.toks[j] if j < len(self.toks) else None

    def take(self, *kinds: str, what: str) -> _Tok:
        tok = self.peek()
        if tok is None or tok.kind not in kinds:
            raise self._fail(tok, f"expected {what}")
        self.i += 1
        return tok

    def parse(self) -> dict[str, JaasSection]:
        sections: dict[str, JaasSection] = {}
        while self.peek() is not None:
            self.section = ""
            name_tok = self.take("word", "string", what="a section name")
            self.section = name_tok.text
            if name_tok.text in sections:
                raise JaasError(
                    self._where(name_tok),
                    f"section {name_tok.text} is defined twice "
                    f"(first at line {sections[name_tok.text].line})",
                )
            self.take("{", what="'{'")
            entries: list[JaasEntry] = []
            while (tok := self.peek()) is not None and tok.kind != "}":
                entries.append(self.entry())
            self.take("}", what="'}'")
            self.take(";", what="';' after '}'")
            if not entries:
                raise JaasError(self._where(name_tok), f"section {self.section} is empty")
            sections[name_tok.text] = JaasSection(
                name_tok.text, tuple(entries), name_tok.line, self.path
            )
        return sections

    def entry(self) -> JaasEntry:
        first = self.peek()
        assert first is not None
        module = flag = None
        following = self.peek(1)
        if not (following is not None and following.kind == "="):  # Java's form: module flag
            module = self.take("word", what="a login module class name").text
            a_flag = "a control flag (" + ", ".join(FLAGS) + ")"
            flag_tok = self.take("word", what=a_flag)
            if flag_tok.text.lower() not in FLAGS:
                raise self._fail(flag_tok, "expected " + a_flag)
            flag = flag_tok.text.lower()
        options: dict[str, str] = {}
        while (tok := self.peek()) is not None and tok.kind != ";":
            key = self.take("word", what="an option name or ';'")
            self.take("=", what=f"'=' after option {key.text}")
            value = self.take("word", "string", what=f"a value for option {key.text}")
            options[key.text] = value.text
        self.take(";", what="';' at the end of the login module entry")
        return JaasEntry(module, flag, options, first.line)


def parse_jaas(text: str, path: str = "<string>") -> JaasConfig:
    """Parse JAAS text; `path` only names the source in errors."""
    return JaasConfig(path, _Parser(text, path).parse())


def load_jaas(path: str | Path) -> JaasConfig:
    """Read and parse the JAAS file at `path`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise JaasError(str(path), f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise JaasError(str(path), f"not UTF-8 text: {exc.reason}") from None
    return parse_jaas(text, str(path))
