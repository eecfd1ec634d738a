"""`pmcluster.auth.kerberos` against a real KDC (the session realm of tests/unit/conftest.py):
what the node accepts (a fresh ticket of a known principal for its own service) and what it
refuses (empty, garbage, truncated, tampered, replayed or multi-leg tokens, tickets for another
service), and what the client side needs (its own keytab's credentials kept private, the
server's mutual-authentication reply checked)."""

from __future__ import annotations

import base64
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import gssapi
import pytest

from pmcluster.auth.jaas import KerberosClientCredentials, KerberosServerCredentials, load_jaas
from pmcluster.auth.kerberos import (
    KerberosAcceptor,
    KerberosInitiator,
    KerberosRejected,
    gss_reason,
    gssapi_module,
)
from pmcluster.errors import AuthError, ConfigError
from pmcluster.testing.kdc import PacemakerRealm

KRB_HOST = "127.0.0.1"  # the session realm's node (tests/unit/conftest.py)
JAAS_KEY = "java.security.auth.login.config"
SPNEGO_OID_DER = bytes.fromhex("06062b0601050502")  # 1.3.6.1.5.5.2
KRB5_OID_DER = bytes.fromhex("06092a864886f712010202")  # 1.2.840.113554.1.2.2


def _der(tag: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes([tag, len(body)]) + body


# A SPNEGO NegTokenInit that offers Kerberos V5 without an optimistic mechanism token: the
# acceptor must ask for a second leg (RFC 4178), which HTTP Negotiate here does not do.
NEG_TOKEN_INIT_WITHOUT_TOKEN = _der(
    0x60, SPNEGO_OID_DER + _der(0xA0, _der(0x30, _der(0xA0, _der(0x30, KRB5_OID_DER))))
)


def server_credentials(realm: PacemakerRealm) -> KerberosServerCredentials:
    return load_jaas(realm.server_jaas).kerberos_server(KRB_HOST)


@pytest.fixture
def acceptor(krb_realm: PacemakerRealm) -> KerberosAcceptor:
    return KerberosAcceptor(server_credentials(krb_realm))


def initiator(realm: PacemakerRealm, who: str, service: str = "pacemaker") -> KerberosInitiator:
    return KerberosInitiator(
        keytab=realm.keytab(who), principal=realm.principal(who), service_name=service
    )


# --- gssapi itself -----------------------------------------------------------------------------


def test_gssapi_module_is_python_gssapi() -> None:
    assert gssapi_module() is gssapi


def test_without_gssapi_kerberos_is_a_config_error_that_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "gssapi", None)  # what `import gssapi` sees when absent
    with pytest.raises(ConfigError) as caught:
        gssapi_module()
    assert caught.value.key == "pacemaker.auth.method"
    assert str(caught.value).startswith(
        "config key 'pacemaker.auth.method': KERBEROS needs the gssapi package "
        "(pip install 'pmcluster[kerberos]'): "
    )
    assert "gssapi" in str(caught.value).rsplit(": ", 1)[1]  # the import error's own words
    assert caught.value.__suppress_context__  # one error, not a chained traceback


def test_gss_reason_is_one_bounded_line() -> None:
    assert gss_reason(ValueError("Major (1):\n  bad\ttoken ")) == "Major (1): bad token"
    assert gss_reason(ValueError("x" * 300)) == "x" * 200
    assert gss_reason(ValueError(" \n ")) == "ValueError"
    assert gss_reason(KerberosRejected("")) == "KerberosRejected"


def test_kerberos_rejected_is_an_auth_error_with_its_reason() -> None:
    rejected = KerberosRejected("Request is a replay")
    assert isinstance(rejected, AuthError)
    assert rejected.reason == "Request is a replay" and str(rejected) == "Request is a replay"


# --- the node's side -------------------------------------------------------------------------


def test_a_fresh_ticket_is_accepted_with_a_reply_the_client_verifies(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor
) -> None:
    assert acceptor.principal == f"pacemaker/{KRB_HOST}@{krb_realm.kdc.realm}"
    client = initiator(krb_realm, "nimbus")
    started = client.start(KRB_HOST)
    principal, reply = acceptor.accept(started.token)
    assert principal == f"nimbus@{krb_realm.kdc.realm}"
    assert reply  # mutual authentication: the AP-REP
    client.finish(started, reply)
    assert started.ctx.complete
    flags = started.ctx.actual_flags
    assert gssapi.RequirementFlag.mutual_authentication in flags
    assert gssapi.RequirementFlag.out_of_sequence_detection in flags
    # Every token gets a context of its own: another user right after is accepted as itself.
    assert acceptor.accept(initiator(krb_realm, "bob").start(KRB_HOST).token)[0] == (
        f"bob@{krb_realm.kdc.realm}"
    )


def test_each_accept_uses_a_fresh_context_with_step_errors_raised_at_once(
    acceptor: KerberosAcceptor,
) -> None:
    first, second = acceptor.context(), acceptor.context()
    assert first is not second
    assert first.usage == "accept" and not first.complete
    assert first.__DEFER_STEP_ERRORS__ is False


def test_a_replayed_token_is_refused_as_a_replay(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor
) -> None:
    token = initiator(krb_realm, "nimbus").start(KRB_HOST).token
    acceptor.accept(token)
    with pytest.raises(KerberosRejected, match="Request is a replay"):
        acceptor.accept(token)
    # ... by another acceptor of the same node too (the replay cache is the library's).
    with pytest.raises(KerberosRejected, match="Request is a replay"):
        KerberosAcceptor(server_credentials(krb_realm)).accept(token)


def test_empty_garbage_truncated_and_tampered_tokens_are_refused(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor
) -> None:
    with pytest.raises(KerberosRejected) as empty:
        acceptor.accept(b"")
    assert empty.value.reason == "empty or malformed Negotiate token"
    with pytest.raises(KerberosRejected, match=r"^Major .*: Invalid token was supplied"):
        acceptor.accept(b"\x60\x82garbage" + bytes(40))
    token = initiator(krb_realm, "nimbus").start(KRB_HOST).token
    with pytest.raises(KerberosRejected, match="Token header is malformed or corrupt"):
        acceptor.accept(token[:-7])
    # The last bytes are the authenticator's checksum: a forged one does not verify.
    forged = initiator(krb_realm, "nimbus").start(KRB_HOST).token
    forged = forged[:-1] + bytes([forged[-1] ^ 0x01])
    with pytest.raises(KerberosRejected, match="integrity check failed"):
        acceptor.accept(forged)


def test_a_spnego_exchange_that_needs_a_second_leg_is_refused(
    acceptor: KerberosAcceptor,
) -> None:
    with pytest.raises(KerberosRejected) as caught:
        acceptor.accept(NEG_TOKEN_INIT_WITHOUT_TOKEN)
    assert caught.value.reason == "multi-leg SPNEGO exchange is not supported"


def test_a_ticket_for_another_service_is_refused(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor, krb_other_service: str
) -> None:
    token = initiator(krb_realm, "nimbus", service=krb_other_service).start(KRB_HOST).token
    with pytest.raises(KerberosRejected, match=f"{krb_other_service}/{KRB_HOST}"):
        acceptor.accept(token)


def test_an_unreadable_keytab_is_a_config_error(krb_realm: PacemakerRealm, tmp_path: Path) -> None:
    missing = str(tmp_path / "no.keytab")
    with pytest.raises(ConfigError) as caught:
        KerberosAcceptor(replace(server_credentials(krb_realm), keytab=missing))
    assert caught.value.key == JAAS_KEY
    assert str(caught.value) == (
        f"config key '{JAAS_KEY}': PacemakerServer keyTab {missing} is not readable"
    )


def test_a_principal_without_a_key_in_the_keytab_is_a_config_error_at_once(
    krb_realm: PacemakerRealm,
) -> None:
    server = replace(server_credentials(krb_realm), principal=krb_realm.principal("alice"))
    with pytest.raises(ConfigError) as caught:
        KerberosAcceptor(server)
    assert caught.value.key == JAAS_KEY
    assert str(caught.value).startswith(
        f"config key '{JAAS_KEY}': cannot use PacemakerServer {server.principal} "
        f"from {server.keytab}: Major "
    )
    assert "No key table entry found" in str(caught.value)
    assert caught.value.__suppress_context__


# --- the client's side -----------------------------------------------------------------------


def test_spnego_and_sasl_tokens_name_their_mechanisms(krb_realm: PacemakerRealm) -> None:
    client = initiator(krb_realm, "nimbus")
    spnego = client.start(KRB_HOST).token
    assert spnego[0] == 0x60 and spnego[4:12] == SPNEGO_OID_DER  # 60 82 LL LL 06 06 ...
    sasl = client.start(KRB_HOST, sasl=True)
    assert sasl.token[0] == 0x60 and sasl.token[4:15] == KRB5_OID_DER
    assert sasl.ctx.mech == gssapi.MechType.kerberos
    assert gssapi.RequirementFlag.integrity in sasl.ctx.actual_flags


def test_a_keytab_login_keeps_its_tickets_private(krb_realm: PacemakerRealm) -> None:
    alice, bob = initiator(krb_realm, "alice"), initiator(krb_realm, "bob")
    tokens = [alice.start(KRB_HOST).token, bob.start(KRB_HOST).token, alice.start(KRB_HOST).token]
    acceptor = KerberosAcceptor(server_credentials(krb_realm))
    realm = krb_realm.kdc.realm
    accepted = [acceptor.accept(t)[0] for t in tokens]
    assert accepted == [f"alice@{realm}", f"bob@{realm}", f"alice@{realm}"]
    # Nothing went to the process's default credential cache.
    with pytest.raises(gssapi.exceptions.GSSError, match="No Kerberos credentials available"):
        gssapi.Credentials(usage="initiate")


def test_without_a_keytab_the_default_ccache_is_used(
    krb_realm: PacemakerRealm,
    acceptor: KerberosAcceptor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    krb_realm.kdc.add_user(user, password)
    ccache = tmp_path / "ccache"
    krb_realm.kdc.kinit(user, password, ccache)
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{ccache}")
    for principal in (None, krb_realm.principal(user)):
        client = KerberosInitiator(keytab=None, principal=principal, service_name="pacemaker")
        started = client.start(KRB_HOST)
        assert acceptor.accept(started.token)[0] == krb_realm.principal(user)
    # A named principal is that one: not whoever the default ccache holds.
    alice = krb_realm.principal("alice")
    with pytest.raises(ConfigError) as caught:
        KerberosInitiator(keytab=None, principal=alice, service_name="pacemaker")
    assert f"cannot get Kerberos client credentials for {alice} (keytab -): " in str(caught.value)


def test_no_default_ccache_is_a_config_error(krb_realm: PacemakerRealm) -> None:
    with pytest.raises(ConfigError) as caught:
        KerberosInitiator(keytab=None, principal=None, service_name="pacemaker")
    assert caught.value.key == JAAS_KEY
    assert str(caught.value).startswith(
        f"config key '{JAAS_KEY}': cannot get Kerberos client credentials for the default "
        "ccache (keytab -): Major "
    )
    assert caught.value.__suppress_context__


def test_a_keytab_without_the_principal_is_a_config_error(krb_realm: PacemakerRealm) -> None:
    keytab = krb_realm.keytab("alice")
    with pytest.raises(ConfigError) as caught:
        KerberosInitiator(
            keytab=keytab, principal=krb_realm.principal("nimbus"), service_name="pacemaker"
        )
    assert str(caught.value).startswith(
        f"config key '{JAAS_KEY}': cannot get Kerberos client credentials for "
        f"{krb_realm.principal('nimbus')} (keytab {keytab}): Major "
    )


def test_from_client_and_from_server_log_in_as_their_principals(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor
) -> None:
    jaas = load_jaas(krb_realm.client_jaas("bob")).kerberos_client()
    assert jaas == KerberosClientCredentials(
        krb_realm.keytab("bob"), krb_realm.principal("bob"), "pacemaker"
    )
    client = KerberosInitiator.from_client(jaas)
    assert (client.principal, client.service_name) == (krb_realm.principal("bob"), "pacemaker")
    assert acceptor.accept(client.start(KRB_HOST).token)[0] == krb_realm.principal("bob")
    # A node towards its peers: its own service key, towards the same service name.
    node = KerberosInitiator.from_server(server_credentials(krb_realm))
    assert node.service_name == "pacemaker" and node.principal == acceptor.principal
    assert acceptor.accept(node.start(KRB_HOST).token)[0] == acceptor.principal


def test_no_ticket_for_an_unknown_host_is_an_auth_error(krb_realm: PacemakerRealm) -> None:
    with pytest.raises(AuthError) as caught:
        initiator(krb_realm, "nimbus").start("nohost.invalid")
    message = str(caught.value)
    assert message.startswith("Kerberos: no ticket for pacemaker@nohost.invalid: Major ")
    assert "not found in Kerberos database" in message
    assert caught.value.__suppress_context__


def test_the_server_must_authenticate_itself(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor
) -> None:
    client = initiator(krb_realm, "nimbus")
    started = client.start(KRB_HOST)
    with pytest.raises(AuthError) as no_reply:
        client.finish(started, None)
    assert str(no_reply.value) == (
        "Kerberos: the server did not authenticate itself (no reply token)"
    )
    # Another exchange's reply (an AP-REP for another context) is not this server's answer.
    other = client.start(KRB_HOST)
    _, other_reply = acceptor.accept(other.token)
    assert other_reply is not None
    with pytest.raises(AuthError, match=r"^Kerberos: mutual authentication failed: Major ") as bad:
        client.finish(started, other_reply)
    assert bad.value.__suppress_context__
    with pytest.raises(AuthError, match=r"^Kerberos: mutual authentication failed: "):
        client.finish(client.start(KRB_HOST), base64.b64decode("oQUwA6ABAA=="))
