"""The JAAS login file parser: Java's grammar plus Storm's documented short form."""

from __future__ import annotations

from pathlib import Path

import pytest

from pmcluster.auth.jaas import JaasError, load_jaas, parse_jaas
from pmcluster.errors import ConfigError

STORM_DIGEST = """
PacemakerDigest {
    username="some username"
    password="some password";
};
"""

FULL = """
/* A Storm cluster's JAAS file:
   the server, the client and the digest user. */
PacemakerServer {
   com.sun.security.auth.module.Krb5LoginModule required  // the node
   useKeyTab=true
   keyTab="/etc/keytabs/pacemaker.keytab"
   storeKey=true
   useTicketCache=false
   principal="pacemaker/node1.example.com@EXAMPLE.COM";
};
PacemakerClient {
   com.sun.security.auth.module.Krb5LoginModule Required
   useKeyTab=true keyTab=/etc/keytabs/nimbus.keytab
   principal="nimbus@EXAMPLE.COM"
   serviceName="pacemaker";
};
"Quoted Name" { x.Y optional a="semi;colon {brace} \\"quote\\" // not a comment"; };
"""


def test_storms_short_form_without_module_and_flag() -> None:
    creds = parse_jaas(STORM_DIGEST).digest()
    assert (creds.username, creds.password) == ("some username", "some password")
    assert "some password" not in repr(creds)  # never in logs by accident


def test_java_form_with_comments_quotes_and_several_sections() -> None:
    jaas = parse_jaas(FULL, "storm_jaas.conf")
    assert set(jaas.sections) == {"PacemakerServer", "PacemakerClient", "Quoted Name"}
    server = jaas.kerberos_server()
    assert server.keytab == "/etc/keytabs/pacemaker.keytab"
    assert server.principal == "pacemaker/node1.example.com@EXAMPLE.COM"
    client = jaas.kerberos_client()
    assert client.keytab == "/etc/keytabs/nimbus.keytab"  # unquoted value with slashes
    assert (client.principal, client.service_name) == ("nimbus@EXAMPLE.COM", "pacemaker")
    entry = jaas.section("PacemakerClient").entries[0]
    assert (entry.module, entry.flag) == (
        "com.sun.security.auth.module.Krb5LoginModule",
        "required",
    )
    odd = jaas.section("Quoted Name")
    assert odd.get("a") == 'semi;colon {brace} "quote" // not a comment'
    assert odd.entries[0].line == 18


def test_several_entries_in_one_section() -> None:
    jaas = parse_jaas("S { a.B required k=1; c.D optional k=2 j=3; };")
    section = jaas.section("S")
    assert [e.module for e in section.entries] == ["a.B", "c.D"]
    assert section.get("k") == "1"  # the first entry's value
    assert section.get("j") == "3"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('A {\n  username="x"\n  password="y";\n};\nB {\n x.Y required k="v";\n', 6, ["B", "'}'"]),
        ("A {\n x.Y maybe k=v;\n};", 2, ["section A", "control flag", "maybe"]),
        ('A {\n username="unterminated;\n};', 2, ["unterminated quoted value"]),
        ("A {\n x.Y required k=v;\n};\n/* never closed", 4, ["unterminated /* comment"]),
        ("A {\n x.Y required k=;\n};", 2, ["section A", "value for option k"]),
        ("A { x.Y required k=v; };\nA { x.Y required k=v; };", 2, ["defined twice", "line 1"]),
        ("A {\n};", 1, ["section A is empty"]),
        ("A {\n x.Y required k=v\n}", 3, ["';'"]),
    ],
)
def test_errors_name_file_line_and_section(text: str, line: int, words: list[str]) -> None:
    with pytest.raises(JaasError) as caught:
        parse_jaas(text, "/etc/storm/jaas.conf")
    message = str(caught.value)
    assert f"/etc/storm/jaas.conf:{line}" in message
    for word in words:
        assert word in message
    assert isinstance(caught.value, ConfigError)  # the daemon reports it like any config error


def test_missing_section_and_option_are_named() -> None:
    jaas = parse_jaas(STORM_DIGEST, "jaas.conf")
    with pytest.raises(
        JaasError, match=r"no section 'PacemakerServer' \(sections: PacemakerDigest"
    ):
        jaas.kerberos_server()
    no_password = parse_jaas('PacemakerDigest { username="u"; };', "j.conf")
    with pytest.raises(JaasError, match=r"j.conf:1: section PacemakerDigest: option 'password'"):
        no_password.digest()


def test_load_jaas_reads_a_file_and_names_an_unreadable_one(tmp_path: Path) -> None:
    path = tmp_path / "jaas.conf"
    path.write_text(STORM_DIGEST)
    assert load_jaas(path).digest().username == "some username"
    with pytest.raises(JaasError, match="cannot read"):
        load_jaas(tmp_path / "missing.conf")
