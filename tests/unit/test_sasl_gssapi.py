"""`pmcluster.storm.sasl_gssapi` (RFC 4752) with real Kerberos contexts from the session KDC
(tests/unit/conftest.py): the exchange in order with and without mutual authentication, and each
way out of it refused with its own reason (empty, garbage or replayed tokens, a wrong order, a
security-layer message that does not verify, a layer other than "none", an authorization id
that is not the authenticated principal)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import gssapi
import pytest

from pmcluster.auth.jaas import load_jaas
from pmcluster.auth.kerberos import KerberosAcceptor, KerberosInitiator
from pmcluster.errors import AuthError
from pmcluster.storm.sasl_gssapi import (
    MAX_AUTHZID_BYTES,
    NO_SECURITY_LAYER,
    GssapiClient,
    GssapiServer,
    parse_security_layers,
    security_layers,
)
from pmcluster.testing.kdc import PacemakerRealm

HOST = "127.0.0.1"  # the session realm's node (tests/unit/conftest.py)
GSSError = gssapi.exceptions.GSSError
KRB5 = gssapi.MechType.kerberos
# A SPNEGO NegTokenInit offering Kerberos V5 with no mechanism token: a context that needs
# another leg (the acceptor answers with a NegTokenResp asking for the token).
SPNEGO_WITHOUT_TOKEN = bytes.fromhex("601b06062b0601050502a011300fa00d300b06092a864886f712010202")
SPNEGO = gssapi.OID.from_int_seq("1.3.6.1.5.5.2")


@pytest.fixture
def acceptor(krb_realm: PacemakerRealm) -> KerberosAcceptor:
    return KerberosAcceptor(load_jaas(krb_realm.server_jaas).kerberos_server(HOST))


def client_context(realm: PacemakerRealm, who: str) -> tuple[gssapi.SecurityContext, bytes]:
    started = KerberosInitiator(
        keytab=realm.keytab(who), principal=realm.principal(who), service_name="pacemaker"
    ).start(HOST, sasl=True)
    return started.ctx, started.token


def jdk_style_context(realm: PacemakerRealm, who: str) -> tuple[gssapi.SecurityContext, bytes]:
    """Storm's JDK client: Kerberos V5 without mutual authentication (SERVER_AUTH false).
    A new in-memory ccache each time: a realm of an earlier session in this process (mutation
    testing runs many) had other keys, so its tickets must not be found."""
    creds = gssapi.Credentials(
        name=gssapi.Name(realm.principal(who), gssapi.NameType.kerberos_principal),
        usage="initiate",
        store={
            b"client_keytab": realm.keytab(who).encode(),
            b"ccache": f"MEMORY:jdk-{who}-{uuid.uuid4().hex}".encode(),
        },
    )
    ctx = gssapi.SecurityContext(
        name=gssapi.Name(f"pacemaker@{HOST}", gssapi.NameType.hostbased_service),
        creds=creds,
        usage="initiate",
        mech=KRB5,
        flags=[gssapi.RequirementFlag.out_of_sequence_detection],
    )
    token = ctx.step()
    assert ctx.complete and token
    return ctx, token


@dataclass
class Offered:
    """An exchange up to the server's security-layer offer; `ctx` is the client's context."""

    server: GssapiServer
    ctx: gssapi.SecurityContext
    offer: bytes


def offered(realm: PacemakerRealm, acceptor: KerberosAcceptor, who: str = "nimbus") -> Offered:
    ctx, token = client_context(realm, who)
    server = GssapiServer(acceptor.context(), GSSError, mech=KRB5)
    ap_rep = server.respond(token)
    assert ap_rep and ctx.step(ap_rep) is None and ctx.complete
    offer = server.respond(b"")
    assert offer is not None
    return Offered(server, ctx, offer)


def choose(exchange: Offered, plain: bytes) -> None:
    """The client's security-layer message with plain text `plain`, integrity only."""
    assert exchange.server.respond(exchange.ctx.wrap(plain, False).message) is None


# --- the security-layer message itself ---------------------------------------------------------


def test_security_layers_pack_mask_size_and_authzid() -> None:
    assert security_layers(NO_SECURITY_LAYER, 0) == b"\x01\x00\x00\x00"
    assert security_layers(0xFF, 0xFFFFFF, b"nimbus") == b"\xff\xff\xff\xffnimbus"
    assert security_layers(4, 0x010203) == b"\x04\x01\x02\x03"
    assert security_layers(0, 0) == b"\x00\x00\x00\x00"
    for layers, max_buffer in ((0x100, 0), (-1, 0), (1, 0x1000000), (1, -1)):
        with pytest.raises(ValueError) as caught:
            security_layers(layers, max_buffer)
        assert str(caught.value) == ("security layer bit mask or maximum buffer size out of range")


def test_parse_security_layers_needs_four_bytes() -> None:
    assert parse_security_layers(b"\x01\x00\x10\x00") == (1, 0x1000, b"")
    assert parse_security_layers(b"\x06\xab\xcd\xefbob@R") == (6, 0xABCDEF, b"bob@R")
    with pytest.raises(AuthError) as caught:
        parse_security_layers(b"\x01\x00\x00")
    assert str(caught.value) == "security-layer message of 3 bytes (at least 4 expected)"


# --- the server --------------------------------------------------------------------------------


def test_the_exchange_with_mutual_authentication(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor
) -> None:
    ctx, token = client_context(krb_realm, "nimbus")
    server = GssapiServer(acceptor.context(), GSSError, mech=KRB5)
    client = GssapiClient(ctx, GSSError)
    assert not server.complete and server.principal is None
    ap_rep = server.respond(token)
    assert ap_rep and not server.complete
    # The principal is known before the layer round trip (the caller may refuse it now).
    assert server.principal == krb_realm.principal("nimbus") and server.authzid is None
    empty = client.respond(ap_rep)  # mutual authentication; the empty token asks for the offer
    assert empty == b"" and ctx.complete and not client.complete
    offer = server.respond(empty)
    assert offer is not None
    choice = client.respond(offer)
    assert client.complete and not server.complete
    assert server.respond(choice) is None
    assert server.complete
    assert server.authzid == server.principal == krb_realm.principal("nimbus")
    with pytest.raises(AuthError) as after:
        server.respond(b"")
    assert str(after.value) == "SASL token after the GSSAPI exchange completed"
    with pytest.raises(AuthError) as client_after:
        client.respond(offer)
    assert str(client_after.value) == "server token after the GSSAPI exchange completed"


def test_the_exchange_without_mutual_authentication_offers_at_once(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor
) -> None:
    ctx, token = jdk_style_context(krb_realm, "bob")
    server = GssapiServer(acceptor.context(), GSSError, mech=KRB5)
    offer = server.respond(token)  # no AP-REP to send: the offer comes first
    assert offer is not None and server.principal == krb_realm.principal("bob")
    client = GssapiClient(ctx, GSSError, authzid="bob")
    choice = client.respond(offer)
    assert client.complete
    assert server.respond(choice) is None and server.authzid == "bob"


def test_the_server_offers_no_layer_and_no_buffer_with_integrity_only(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor
) -> None:
    for who in ("nimbus", "bob"):
        exchange = offered(krb_realm, acceptor, who)
        unwrapped = exchange.ctx.unwrap(exchange.offer)
        assert unwrapped.message == b"\x01\x00\x00\x00" and not unwrapped.encrypted
    jdk, token = jdk_style_context(krb_realm, "bob")
    offer = GssapiServer(acceptor.context(), GSSError, mech=KRB5).respond(token)
    assert offer is not None
    unwrapped = jdk.unwrap(offer)
    assert unwrapped.message == b"\x01\x00\x00\x00" and not unwrapped.encrypted


def test_the_clients_choice_is_no_layer_with_its_authzid(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor
) -> None:
    exchange = offered(krb_realm, acceptor)
    client = GssapiClient(exchange.ctx, GSSError, authzid="nimbus")
    server_ctx = exchange.server._ctx  # the acceptor's half of the same real context
    choice = server_ctx.unwrap(client.respond(exchange.offer))
    assert choice.message == b"\x01\x00\x00\x00nimbus" and not choice.encrypted


def test_an_empty_or_unreadable_first_token_is_refused(acceptor: KerberosAcceptor) -> None:
    server = GssapiServer(acceptor.context(), GSSError, mech=KRB5)
    with pytest.raises(AuthError) as empty:
        server.respond(b"")
    assert str(empty.value) == "empty GSSAPI context token"
    with pytest.raises(AuthError, match=r"^GSSAPI token refused: Major .*Invalid token") as bad:
        GssapiServer(acceptor.context(), GSSError, mech=KRB5).respond(b"\x60\x82garbage")
    assert bad.value.__suppress_context__


def test_a_replayed_token_is_refused(krb_realm: PacemakerRealm, acceptor: KerberosAcceptor) -> None:
    _, token = client_context(krb_realm, "nimbus")
    GssapiServer(acceptor.context(), GSSError, mech=KRB5).respond(token)
    replayed = GssapiServer(acceptor.context(), GSSError, mech=KRB5)
    with pytest.raises(AuthError, match=r"^GSSAPI token refused: .*Request is a replay"):
        replayed.respond(token)
    assert replayed.principal is None


def test_a_context_of_another_mechanism_is_refused(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor
) -> None:
    _, token = client_context(krb_realm, "nimbus")
    server = GssapiServer(acceptor.context(), GSSError, mech=SPNEGO)
    with pytest.raises(AuthError) as caught:
        server.respond(token)
    assert str(caught.value) == f"GSSAPI mechanism {KRB5} is not Kerberos V5"
    assert server.principal is None  # refused before anyone is named


def test_without_a_required_mechanism_any_is_accepted_and_legs_are_answered(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor
) -> None:
    _, token = client_context(krb_realm, "alice")
    server = GssapiServer(acceptor.context(), GSSError)
    assert server.respond(token) and server.principal == krb_realm.principal("alice")
    # A context that needs another leg: the acceptor's answer is passed on, nobody named yet.
    spnego = GssapiServer(acceptor.context(), GSSError)
    answer = spnego.respond(SPNEGO_WITHOUT_TOKEN)
    assert answer is not None and answer[:1] == b"\xa1"  # a NegTokenResp
    assert spnego.principal is None and not spnego.complete
    with pytest.raises(AuthError, match=r"^GSSAPI token refused: "):
        spnego.respond(b"\xa1\x03\x30\x01\x00")  # still in the context stage: stepped again


def test_a_token_after_the_ap_rep_must_be_empty(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor
) -> None:
    _, token = client_context(krb_realm, "nimbus")
    server = GssapiServer(acceptor.context(), GSSError, mech=KRB5)
    assert server.respond(token)
    with pytest.raises(AuthError) as caught:
        server.respond(b"\x00")
    assert str(caught.value) == "non-empty token after the GSSAPI context was established"


def test_a_layer_message_that_does_not_verify_is_refused(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor
) -> None:
    exchange = offered(krb_realm, acceptor)
    with pytest.raises(AuthError, match=r"^security-layer message not verified: Major ") as bad:
        exchange.server.respond(b"\x05\x04garbage")
    assert bad.value.__suppress_context__
    # Wrapped by another (genuine) exchange's context: not this one's.
    exchange = offered(krb_realm, acceptor)
    other = offered(krb_realm, acceptor)
    with pytest.raises(AuthError, match=r"^security-layer message not verified: "):
        exchange.server.respond(other.ctx.wrap(b"\x01\x00\x00\x00", False).message)


@pytest.mark.parametrize("layer", [0, 2, 3, 4, 7])
def test_only_no_security_layer_may_be_chosen(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor, layer: int
) -> None:
    exchange = offered(krb_realm, acceptor)
    with pytest.raises(AuthError) as caught:
        choose(exchange, security_layers(layer, 0x10000))
    assert str(caught.value) == f"client chose security layer {layer}; only 1 (none) is offered"
    assert not exchange.server.complete


def test_a_short_layer_message_is_refused(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor
) -> None:
    exchange = offered(krb_realm, acceptor)
    with pytest.raises(AuthError, match=r"^security-layer message of 3 bytes \(at least 4"):
        choose(exchange, b"\x01\x00\x00")


def test_any_maximum_buffer_size_is_accepted(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor
) -> None:
    exchange = offered(krb_realm, acceptor)
    choose(exchange, b"\x01\xff\xff\xff")
    assert exchange.server.complete and exchange.server.authzid == krb_realm.principal("nimbus")


@pytest.mark.parametrize(
    "authzid",
    ["", "nimbus", "nimbus@PMCLUSTER.TEST"],
    ids=["none", "short-name", "full-principal"],
)
def test_an_authzid_naming_the_principal_itself_is_accepted(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor, authzid: str
) -> None:
    exchange = offered(krb_realm, acceptor)
    choose(exchange, security_layers(NO_SECURITY_LAYER, 0, authzid.encode()))
    assert exchange.server.complete
    assert exchange.server.authzid == (authzid or krb_realm.principal("nimbus"))


@pytest.mark.parametrize(
    "authzid",
    ["alice", "alice@PMCLUSTER.TEST", "nimbus@OTHER.TEST", "nimbus/admin", "nimbus@", "@"],
)
def test_an_authzid_naming_someone_else_is_refused(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor, authzid: str
) -> None:
    exchange = offered(krb_realm, acceptor)
    with pytest.raises(AuthError) as caught:
        choose(exchange, security_layers(NO_SECURITY_LAYER, 0, authzid.encode()))
    assert str(caught.value) == f"nimbus@PMCLUSTER.TEST may not act as {authzid!r}"
    assert not exchange.server.complete and exchange.server.authzid is None


def test_a_host_principals_short_form_is_itself(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor
) -> None:
    """`pacemaker/127.0.0.1` for `pacemaker/127.0.0.1@REALM`: everything before the realm."""
    node = KerberosInitiator.from_server(load_jaas(krb_realm.server_jaas).kerberos_server(HOST))
    started = node.start(HOST, sasl=True)
    server = GssapiServer(acceptor.context(), GSSError, mech=KRB5)
    ap_rep = server.respond(started.token)
    assert ap_rep is not None
    started.ctx.step(ap_rep)
    assert server.respond(b"") is not None
    authzid = f"pacemaker/{HOST}".encode()
    assert server.respond(started.ctx.wrap(security_layers(1, 0, authzid), False).message) is None
    assert server.authzid == f"pacemaker/{HOST}"


def test_an_authzid_too_long_or_not_utf8_is_refused(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor
) -> None:
    longest = offered(krb_realm, acceptor)
    with pytest.raises(AuthError, match="may not act as"):  # read, compared: not too long
        choose(longest, security_layers(1, 0, b"a" * MAX_AUTHZID_BYTES))
    too_long = offered(krb_realm, acceptor)
    with pytest.raises(AuthError) as caught:
        choose(too_long, security_layers(1, 0, b"a" * (MAX_AUTHZID_BYTES + 1)))
    assert str(caught.value) == "authorization id too long"
    not_utf8 = offered(krb_realm, acceptor)
    with pytest.raises(AuthError) as bad:
        choose(not_utf8, security_layers(1, 0, b"nimbus\xff"))
    assert str(bad.value) == "authorization id is not UTF-8"
    assert bad.value.__suppress_context__


# --- the client --------------------------------------------------------------------------------


def test_the_client_refuses_a_server_token_that_does_not_verify(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor
) -> None:
    ctx, _ = client_context(krb_realm, "nimbus")
    with pytest.raises(AuthError, match=r"^GSSAPI: server token refused: Major ") as bad_ap_rep:
        GssapiClient(ctx, GSSError).respond(b"\x6f\x03garbage")
    assert bad_ap_rep.value.__suppress_context__
    exchange = offered(krb_realm, acceptor)
    with pytest.raises(AuthError, match=r"^GSSAPI: server token refused: "):
        GssapiClient(exchange.ctx, GSSError).respond(b"\x05\x04garbage")


def test_the_client_needs_the_no_layer_offer(
    krb_realm: PacemakerRealm, acceptor: KerberosAcceptor
) -> None:
    exchange = offered(krb_realm, acceptor)
    server_ctx = exchange.server._ctx
    exchange.ctx.unwrap(exchange.offer)  # in sequence: the offers below come after this one
    client = GssapiClient(exchange.ctx, GSSError)
    with pytest.raises(AuthError) as caught:
        client.respond(server_ctx.wrap(security_layers(2 | 4, 0x10000), False).message)
    assert str(caught.value) == "server offers security layers 0x6, not 1 (none)"
    assert not client.complete
    with pytest.raises(AuthError, match=r"^security-layer message of 2 bytes"):
        client.respond(server_ctx.wrap(b"\x01\x00", False).message)
    # An offer of every layer includes "none": that one is chosen.
    choice = client.respond(server_ctx.wrap(security_layers(7, 0x10000), False).message)
    assert client.complete and server_ctx.unwrap(choice).message == b"\x01\x00\x00\x00"
