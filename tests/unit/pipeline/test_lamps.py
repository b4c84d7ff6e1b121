from __future__ import annotations

import base64
from pathlib import Path

import pytest

from pipeline.errors import ProvisioningError
from pipeline.lamps import (
    LAMP_HASH_ITERATIONS,
    ComponentAccount,
    Lamp,
    MosquittoCredentials,
    hash_password,
    parse_bulk_csv,
    render_acl,
    verify_password,
)

CONNECTOR = ComponentAccount("veilleuse-connector", "pw", read=("lamps/#",))


def test_hash_is_mosquitto_pbkdf2_format() -> None:
    hashed = hash_password("secret", salt=b"0123456789ab")
    _, kind, iterations, salt, digest = hashed.split("$")
    assert (kind, iterations) == ("7", "101")
    assert base64.b64decode(salt) == b"0123456789ab"
    assert len(base64.b64decode(digest)) == 64
    assert verify_password("secret", hashed)
    assert not verify_password("Secret", hashed)
    assert hash_password("secret") != hash_password("secret")  # salted


def test_acl_confines_each_lamp_to_its_own_site_and_id() -> None:
    acl = render_acl([CONNECTOR], [Lamp("fr-lyon-12", "L-000123", 0)])
    assert "user veilleuse-connector\ntopic read lamps/#" in acl
    assert "user L-000123\ntopic write lamps/fr-lyon-12/L-000123/#" in acl
    assert "pattern" not in acl  # no rule applies to every user


def test_the_stacks_files_keep_lamps_out_of_the_acl_file(tmp_path: Path) -> None:
    """The lamps' rights go to the plugin's table (one line each), not to the acl_file, whose
    reload is quadratic in its sections; the per-lamp form is kept aside for docker-compose."""
    store = MosquittoCredentials(tmp_path, [CONNECTOR])
    store.provision([("fr-lyon-12", "L-000123"), ("fr-nice-3", "L-000124")])
    acl = store.acl_file.read_text()
    assert "user veilleuse-connector\ntopic read lamps/#" in acl
    assert "L-000123" not in acl
    assert "pattern" not in acl
    assert store.lamp_sites_file.read_text() == "L-000123 fr-lyon-12\nL-000124 fr-nice-3\n"
    assert "user L-000124\ntopic write lamps/fr-nice-3/L-000124/#" in (
        store.per_lamp_acl_file.read_text()
    )
    store.revoke(["L-000123"])
    assert store.lamp_sites_file.read_text() == "L-000124 fr-nice-3\n"


def test_a_broker_without_the_plugin_keeps_every_lamp_in_its_acl_file(tmp_path: Path) -> None:
    store = MosquittoCredentials(tmp_path, [CONNECTOR], per_lamp_acl=True)
    store.provision([("fr-lyon-12", "L-000123")])
    assert "user L-000123\ntopic write lamps/fr-lyon-12/L-000123/#" in store.acl_file.read_text()


def test_lamp_hashes_are_single_iteration_component_hashes_are_not(tmp_path: Path) -> None:
    store = MosquittoCredentials(tmp_path, [CONNECTOR])
    (cred,) = store.provision([("fr-lyon-12", "L-000123")])
    passwd = dict(line.split(":", 1) for line in store.password_file.read_text().splitlines())
    assert passwd["L-000123"].split("$")[2] == str(LAMP_HASH_ITERATIONS) == "1"
    assert passwd["veilleuse-connector"].split("$")[2] == "101"
    assert verify_password(cred.password, passwd["L-000123"])
    assert len(cred.password) >= 32  # 192 random bits: what makes one iteration enough


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("fr-lyon-12", "expected site_id,lamp_id"),
        ("FR-Lyon,L-1", "invalid site_id"),
        ("fr-lyon,L 1", "invalid lamp_id"),
        ("a,L-1\nb,L-1", "listed twice"),
        ("a," + "L" * 41, "invalid lamp_id"),
    ],
)
def test_bulk_csv_errors_name_the_line(text: str, error: str) -> None:
    with pytest.raises(ProvisioningError, match=error):
        parse_bulk_csv(text)


def test_bulk_csv_accepts_header_comments_and_blank_lines() -> None:
    text = "site_id,lamp_id\n# a comment\n\nfr-lyon-12, L-1\nfr-nice-3,L-2\n"
    assert parse_bulk_csv(text) == [("fr-lyon-12", "L-1"), ("fr-nice-3", "L-2")]


def test_provision_rotate_revoke(tmp_path: Path) -> None:
    store = MosquittoCredentials(tmp_path, [CONNECTOR])
    (cred,) = store.provision([("fr-lyon-12", "L-000123")])
    passwd = dict(line.split(":", 1) for line in store.password_file.read_text().splitlines())
    assert verify_password(cred.password, passwd["L-000123"])
    assert verify_password("pw", passwd["veilleuse-connector"])
    assert cred.password not in store.registry_file.read_text()
    assert cred.password not in store.password_file.read_text()

    with pytest.raises(ProvisioningError, match="already provisioned"):
        store.provision([("fr-lyon-12", "L-000123")])
    (rotated,) = store.provision([("fr-lyon-12", "L-000123")], rotate=True)
    passwd = dict(line.split(":", 1) for line in store.password_file.read_text().splitlines())
    assert not verify_password(cred.password, passwd["L-000123"])
    assert verify_password(rotated.password, passwd["L-000123"])

    store.revoke(["L-000123"])
    assert store.lamps() == []
    assert "L-000123" not in store.password_file.read_text()
    assert "L-000123" not in store.acl_file.read_text()
    with pytest.raises(ProvisioningError, match="not provisioned: L-000123"):
        store.revoke(["L-000123"])


def test_a_lamp_cannot_take_a_component_account(tmp_path: Path) -> None:
    store = MosquittoCredentials(tmp_path, [CONNECTOR])
    with pytest.raises(ProvisioningError, match="component"):
        store.provision([("site", "veilleuse-connector")])


def test_failed_bulk_provisioning_changes_nothing(tmp_path: Path) -> None:
    store = MosquittoCredentials(tmp_path, [CONNECTOR])
    store.provision([("site", "L-1")])
    with pytest.raises(ProvisioningError):
        store.provision([("site", "L-2"), ("site", "L-1")])
    assert [lamp.lamp_id for lamp in store.lamps()] == ["L-1"]
