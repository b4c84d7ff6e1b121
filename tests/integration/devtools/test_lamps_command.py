"""`veilleuse lamps`: provisioned credentials work on the real broker, revoked ones do not."""

from __future__ import annotations

import stat
import uuid
from collections.abc import Callable
from pathlib import Path

from devtools import smoke
from pipeline.settings import Settings
from tests.integration.devtools.test_stack_command import veilleuse


def test_provision_prints_a_password_once_that_the_broker_accepts(
    settings: Settings, require: Callable[..., None]
) -> None:
    require("mosquitto")
    lamp_id = f"L-{uuid.uuid4().hex[:8]}"
    result = veilleuse("lamps", "provision", "--site", "fr-test-1", "--lamp", lamp_id)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.strip().splitlines()
    assert header == "site_id,lamp_id,password"
    site_id, got_lamp, password = row.split(",")
    assert (site_id, got_lamp) == ("fr-test-1", lamp_id)
    try:
        listed = veilleuse("lamps", "list").stdout
        assert f"fr-test-1,{lamp_id}," in listed
        assert password not in listed
        session = smoke.connect_when_reloaded(settings, lamp_id, password)
        reason = session.publish(
            f"lamps/fr-test-1/{lamp_id}/telemetry", smoke.lamp_message(lamp_id, 0)
        )
        session.close()
        assert not reason.is_failure

        again = veilleuse("lamps", "provision", "--site", "fr-test-1", "--lamp", lamp_id)
        assert again.returncode == 1
        assert "already provisioned" in again.stderr
    finally:
        assert veilleuse("lamps", "revoke", lamp_id).returncode == 0
    assert lamp_id not in veilleuse("lamps", "list").stdout


def test_bulk_provisioning_from_csv(
    settings: Settings, require: Callable[..., None], tmp_path: Path
) -> None:
    require("mosquitto")
    lamp_ids = [f"L-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    source = tmp_path / "lamps.csv"
    source.write_text("site_id,lamp_id\n" + "".join(f"fr-bulk-1,{lamp}\n" for lamp in lamp_ids))
    out = tmp_path / "credentials.csv"
    result = veilleuse("lamps", "provision", "--csv", str(source), "--out", str(out))
    try:
        assert result.returncode == 0, result.stderr
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
        assert sorted(row[1] for row in rows) == sorted(lamp_ids)
        _, lamp_id, password = rows[0]
        smoke.connect_when_reloaded(settings, lamp_id, password).close()
    finally:
        veilleuse("lamps", "revoke", *lamp_ids)


def test_bad_input_is_refused_with_a_clear_error(require: Callable[..., None]) -> None:
    require("mosquitto")
    bad = veilleuse("lamps", "provision", "--site", "Not A Site", "--lamp", "L-1")
    assert bad.returncode == 1
    assert "invalid site_id" in bad.stderr
    unknown = veilleuse("lamps", "revoke", "L-never-provisioned")
    assert unknown.returncode == 1
    assert "not provisioned: L-never-provisioned" in unknown.stderr
    usage = veilleuse("lamps", "provision", "--site", "fr-x")
    assert usage.returncode == 2
