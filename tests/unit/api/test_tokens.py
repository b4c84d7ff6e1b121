"""Token rules: who may see and acknowledge what, and what a token name or role may be."""

from __future__ import annotations

import pytest

from api.tokens import Principal, TokenError, digest, looks_like_token, validate


def test_a_staff_principal_sees_only_its_sites_and_may_acknowledge() -> None:
    staff = Principal("nurse-a", "staff", ("fr-lyon-12",))
    assert staff.may_see("fr-lyon-12")
    assert not staff.may_see("fr-lyon-13")
    assert staff.may_acknowledge


@pytest.mark.parametrize(("role", "acknowledges"), [("support", False), ("admin", True)])
def test_support_and_admin_see_every_site(role: str, acknowledges: bool) -> None:
    principal = Principal("x", role)  # type: ignore[arg-type]
    assert principal.may_see("any-site")
    assert principal.may_acknowledge is acknowledges


@pytest.mark.parametrize(
    ("name", "role", "sites", "problem"),
    [
        ("nurse a", "staff", ("s-1",), "token name"),
        ("n", "root", (), "role"),
        ("n", "staff", (), "at least one --site"),
        ("n", "support", ("s-1",), "--site is for staff"),
        ("n", "staff", ("Bad_Site",), "site"),
    ],
)
def test_invalid_tokens_are_refused_with_the_reason(
    name: str, role: str, sites: tuple[str, ...], problem: str
) -> None:
    with pytest.raises(TokenError, match=problem):
        validate(name, role, sites)


def test_valid_token_definitions_pass() -> None:
    validate("nurse.a@home-12", "staff", ("fr-lyon-12", "fr-lyon-13"))
    validate("support-desk", "support", ())


def test_only_the_hash_identifies_a_token() -> None:
    assert digest("vl_abc") != digest("vl_abd")
    assert len(digest("vl_abc")) == 32
    assert looks_like_token("vl_" + "x" * 43)
    assert not looks_like_token("x" * 46)
    assert not looks_like_token("vl_short")
