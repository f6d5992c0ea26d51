"""Identities, pinned TLS and signed requests, tried as an intruder and a replaying party
would (keys are made at test time and never committed)."""

from __future__ import annotations

import datetime
import socket
import ssl
import stat
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppa_kernel.contract.config import Analyst, ConfigError, load_consortium
from ppa_kernel.contract.errors import PolicyRefused, ProtocolError
from ppa_kernel.contract.identity import (
    Identity,
    IdentityError,
    Pin,
    client_context,
    create_identity,
    peer_fingerprint,
    server_context,
    sign,
    verify,
)
from ppa_kernel.contract.protocol import request
from ppa_kernel.party.requests import RequestGuard


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return {name: create_identity(folder, name) for name in ("alice", "bob", "hospital")}


def pin(identity: Identity) -> Pin:
    return Pin.load(identity.name, identity.cert_path, identity.fingerprint)


def test_new_identity_is_private_and_never_overwritten(tmp_path):
    identity = create_identity(tmp_path, "insurer")
    assert stat.S_IMODE(identity.key_path.stat().st_mode) == 0o600
    assert identity.fingerprint.startswith("sha256:") and len(identity.fingerprint) == 71
    with pytest.raises(IdentityError, match="not overwriting"):
        create_identity(tmp_path, "insurer")
    with pytest.raises(IdentityError, match="unusable identity name"):
        create_identity(tmp_path, "../evil")


def test_loading_refuses_a_readable_key_and_a_foreign_key(tmp_path, people):
    identity = create_identity(tmp_path, "x")
    identity.key_path.chmod(0o644)
    with pytest.raises(IdentityError, match="readable by others"):
        Identity.load(identity.cert_path)
    with pytest.raises(IdentityError, match="does not belong"):
        Identity.load(identity.cert_path, people["alice"].key_path)


def test_a_pin_must_match_the_certificate(people):
    alice, bob = people["alice"], people["bob"]
    with pytest.raises(IdentityError, match="not the certificate pinned"):
        Pin.load("alice", alice.cert_path, bob.fingerprint)
    with pytest.raises(IdentityError, match="no fingerprint pinned"):
        Pin.load("alice", alice.cert_path, None)
    spaced = alice.fingerprint.upper().replace("SHA256:", "")
    assert Pin.load("alice", alice.cert_path, spaced).fingerprint == alice.fingerprint


def test_consortium_file_refuses_a_wrong_pin_and_the_old_shared_secret(tmp_path, people):
    lines = ['[consortium]', 'link_salt = "s"']
    for i, name in enumerate(("alice", "bob", "hospital")):
        identity = people[name]
        wrong = people["alice"].fingerprint if name == "bob" else identity.fingerprint
        lines += ["[[party]]", f'name = "{name}"', f"port = {7000 + i}",
                  f"mpc_port = {7100 + i}", f'certificate = "{identity.cert_path}"',
                  f'fingerprint = "{wrong}"']
    path = tmp_path / "consortium.toml"
    path.write_text("\n".join(lines))
    with pytest.raises(ConfigError, match="not the certificate pinned for bob"):
        load_consortium(path)
    path.write_text(path.read_text().replace('link_salt = "s"',
                                             'link_salt = "s"\nsecret_file = "k"'))
    with pytest.raises(ConfigError, match="no longer use one"):
        load_consortium(path)


def test_signatures_bind_every_field(people):
    alice = people["alice"]
    body = sign({"op": "run", "plan": {"x": 1}}, alice)
    verify(body, pin(alice))
    with pytest.raises(IdentityError):
        verify({**body, "plan": {"x": 2}}, pin(alice))
    with pytest.raises(IdentityError):
        verify(body, pin(people["bob"]))
    with pytest.raises(IdentityError):
        verify({**body, "sig": "not base64!"}, pin(alice))


# -- the kernel's request checks ---------------------------------------------------------


@pytest.fixture
def guard():
    return RequestGuard("hospital", started=time.time() - 1)


def analyst(people, name="alice", role="analyst") -> Analyst:
    return Analyst(pin(people[name]), role)


def test_a_fresh_request_passes_once(guard, people):
    body = request("run", people["alice"], "hospital", run_id="ab" * 8)
    guard.check(body, analyst(people))
    with pytest.raises(ProtocolError, match="replayed"):
        guard.check(body, analyst(people))


@pytest.mark.parametrize("change, message", [
    (lambda b: {**b, "party": "insurer"}, "meant for 'insurer'"),
    (lambda b: {**b, "analyst": "bob"}, "names analyst 'bob'"),
    (lambda b: {**b, "run_id": "ff" * 8}, "not signed"),
])
def test_a_changed_request_is_refused(guard, people, change, message):
    body = request("run", people["alice"], "hospital", run_id="ab" * 8)
    with pytest.raises(ProtocolError, match=message):
        guard.check(change(body), analyst(people))


def test_stale_future_and_pre_start_requests_are_refused(people):
    guard = RequestGuard("hospital", started=time.time() - 1000)
    alice = people["alice"]
    for skew in (-200, 200):
        body = sign({**request("hello", alice, "hospital"), "time": time.time() + skew}, alice)
        with pytest.raises(ProtocolError, match="stale request"):
            guard.check(body, analyst(people))
    restarted = RequestGuard("hospital")
    old = sign({**request("hello", alice, "hospital"), "time": time.time() - 5}, alice)
    with pytest.raises(ProtocolError, match="before this kernel started"):
        restarted.check(old, analyst(people))


def test_another_analysts_key_cannot_speak_for_alice(guard, people):
    forged = request("run", people["bob"], "hospital")
    forged = sign({**forged, "analyst": "alice"}, people["bob"])
    with pytest.raises(ProtocolError, match="not signed by alice"):
        guard.check(forged, analyst(people))


def test_a_reviewer_may_look_but_not_run(guard, people):
    reviewer = analyst(people, "bob", "reviewer")
    guard.check(request("hello", people["bob"], "hospital"), reviewer)
    with pytest.raises(PolicyRefused, match="may not send 'run'"):
        guard.check(request("run", people["bob"], "hospital"), reviewer)


def test_the_nonce_memory_is_bounded(people):
    guard = RequestGuard("hospital", capacity=3, started=time.time() - 1)
    for _ in range(3):
        guard.check(request("hello", people["alice"], "hospital"), analyst(people))
    with pytest.raises(ProtocolError, match="too many requests"):
        guard.check(request("hello", people["alice"], "hospital"), analyst(people))
    guard._forget(time.time() + 1000)  # once they are stale they are forgotten
    guard.check(sign({**request("hello", people["alice"], "hospital"),
                      "time": time.time()}, people["alice"]), analyst(people), now=time.time())


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(["op", "analyst", "party", "nonce", "time", "run_id"]),
       value=st.one_of(st.text(max_size=40), st.integers(), st.floats(allow_nan=False),
                       st.none()))
def test_any_edit_of_a_signed_request_is_refused(people, key, value):
    guard = RequestGuard("hospital", started=time.time() - 1)
    body = request("run", people["alice"], "hospital", run_id="ab" * 8)
    edited = {**body, key: value}
    if edited == body:
        return
    with pytest.raises((ProtocolError, PolicyRefused)):
        guard.check(edited, analyst(people))


# -- pinned TLS --------------------------------------------------------------------------


def handshake(server: Identity, trusted_by_server: list[Pin], client: Identity,
              trusted_by_client: list[Pin]) -> tuple[str | None, str | None]:
    """(client error, server error) of one TLS handshake on loopback; the server reports
    the client's fingerprint on success."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict[str, str | None] = {}

    def serve():
        conn, _ = listener.accept()
        conn.settimeout(5)
        try:
            with server_context(server, trusted_by_server).wrap_socket(conn, server_side=True) \
                    as tls:
                seen["peer"] = peer_fingerprint(tls)
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            seen["error"] = str(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    error = None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client_context(client, trusted_by_client).wrap_socket(raw) as tls:
            assert tls.recv(2) == b"ok"
            assert peer_fingerprint(tls) == server.fingerprint
    except (ssl.SSLError, OSError, AssertionError) as exc:
        error = str(exc) or type(exc).__name__
    thread.join(10)
    listener.close()
    return error, seen.get("error") or None


def test_tls_accepts_only_pinned_certificates(tmp_path, people):
    alice, bob, hospital = people["alice"], people["bob"], people["hospital"]
    assert handshake(hospital, [pin(alice)], alice, [pin(hospital)]) == (None, None)
    # bob is not pinned by the kernel: the handshake fails and the kernel says nothing
    client_error, server_error = handshake(hospital, [pin(alice)], bob, [pin(hospital)])
    assert client_error and server_error
    # a kernel holding another certificate than the pinned one is refused by the client
    client_error, _ = handshake(bob, [pin(alice)], alice, [pin(hospital)])
    assert client_error and "certificate verify failed" in client_error
    # an expired but pinned certificate is refused as expired
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    old = create_identity(tmp_path, "old", days=1, not_before=past)
    with pytest.raises(IdentityError, match="not valid now"):
        old.check_valid()
    _, server_error = handshake(hospital, [pin(old)], old, [pin(hospital)])
    assert server_error and "expired" in server_error


def test_party_files_pin_each_analyst_once_under_the_certificates_name(tmp_path):
    from ppa_kernel.analyst.local import write_local_config
    from ppa_kernel.analyst.synthetic import generate
    from ppa_kernel.contract.config import load_party

    write_local_config(tmp_path, generate(n_core=50, seed=1), "pseudonym",
                       analysts=("analyst", "bob"))
    path = tmp_path / "insurer.toml"
    original = path.read_text()
    assert set(load_party(path).analysts) == {"analyst", "bob"}
    path.write_text(original.replace('[policy.analysts."bob"]', '[policy.analysts."carol"]'))
    with pytest.raises(ConfigError, match="made out to 'bob', not 'carol'"):
        load_party(path)
    path.write_text(original.replace("keys/bob.crt", "keys/analyst.crt").replace(
        load_party_fingerprint(tmp_path, "bob"), load_party_fingerprint(tmp_path, "analyst")))
    with pytest.raises(ConfigError):  # analyst's certificate under bob's name, or twice
        load_party(path)
    path.write_text(original.replace('fingerprint = "sha256:', 'fingerprint = 7 # "', 1))
    with pytest.raises(ConfigError, match="must be text"):
        load_party(path)


def load_party_fingerprint(folder, name: str) -> str:
    return Identity.from_prefix(folder / "keys" / name).fingerprint
