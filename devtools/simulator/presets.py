"""The simulations the commands run: the demo's nursing home and a fleet at protocol rates."""

from __future__ import annotations

from dataclasses import replace

from devtools.simulator.generator import SimConfig
from pipeline.settings import DetectionSettings

# The demo's nursing home: one room per line, (lamp index, script, start s). Every script of
# scenarios.SCRIPTS appears; rooms 14 and 15 only live their day (and get the junk).
DEMO_PLAN: tuple[tuple[int, str, float], ...] = (
    (0, "fall", 20),
    (0, "fall", 150),
    (1, "fall_silent", 40),
    (2, "fall_recovered", 30),
    (2, "help_cancelled", 120),
    (3, "slow_slide", 50),
    (4, "long_lie", 70),
    (5, "help_pressed", 25),
    (6, "help_long_press", 110),
    (7, "lying_in_bed", 30),
    (8, "floor_care", 40),
    (9, "heat_wave", 5),
    (10, "lamp_offline", 80),
    (11, "wifi_outage", 60),
    (12, "reboot", 100),
    (13, "fall_recovered", 160),
)
DEMO_JUNK: tuple[tuple[int, str, float], ...] = tuple(
    (14 + i % 2, reason, 15 + 20 * i)
    for i, reason in enumerate(
        ("not_json", "truncated", "not_utf8", "wrong_type", "unknown_type",
         "lamp_id_mismatch", "oversized", "not_object")
    )
)  # fmt: skip


def accelerated(detection: DetectionSettings, factor: float) -> DetectionSettings:
    """The slow rules ``factor`` times faster, the critical ones unchanged.

    Falls, long lies and help requests keep their real 30 s / 60 s / 30 s: ``ts`` follows wall
    time and the workers' per-lamp clocks are learnt from it, so event time cannot run faster
    than the wall without breaking rule 6. What is compressed is the waiting: the environment
    rule's 10-minute window (and its hop and grace), the offline rule's 5 minutes, and the
    telemetry period the simulated lamps use (so a window still gets its readings).
    """
    return detection.model_copy(
        update={
            "environment_window_s": detection.environment_window_s / factor,
            "environment_step_s": detection.environment_step_s / factor,
            "window_grace_s": detection.window_grace_s / factor,
            "offline_after_s": detection.offline_after_s / factor,
        }
    )


def demo_config(
    start_ms: int, *, seed: int = 7, run: str = "demo", factor: float = 5.0
) -> SimConfig:
    """16 rooms of one nursing home, 3.5 minutes of accelerated life, every kind of incident."""
    return SimConfig(
        lamps=16,
        sites=1,
        seed=seed,
        start_ms=start_ms,
        duration_s=210.0,
        observe_s=10.0,
        detection=accelerated(DetectionSettings(), factor),
        telemetry_period_s=60.0 / factor,
        life_speed=240.0,  # a day of activities in 6 minutes
        plan=DEMO_PLAN,
        duplicate_rate=0.03,
        reorder_rate=0.03,
        reorder_max_s=20.0,
        junk_rate=0.0,
        junk_plan=DEMO_JUNK,
        site_prefix=f"{run}",
        lamp_prefix=f"{run}",
    )


def detection_env(detection: DetectionSettings) -> dict[str, str]:
    """The ``VEILLEUSE_DETECTION__*`` variables that give a worker these thresholds."""
    names = (
        "fall_confirm_s", "long_lie_s", "offline_after_s", "environment_window_s",
        "environment_step_s", "window_grace_s",
    )  # fmt: skip
    return {f"VEILLEUSE_DETECTION__{n.upper()}": str(getattr(detection, n)) for n in names}


SHORT_PLAN: tuple[tuple[int, str, float], ...] = (
    (0, "fall", 5),
    (1, "fall_silent", 5),
    (2, "fall_recovered", 10),
    (3, "help_cancelled", 8),
    (4, "floor_care", 3),
    (5, "lying_in_bed", 5),
    (6, "lamp_offline", 20),
    (7, "long_lie", 10),
    (8, "reboot", 30),
)


def short_config(
    start_ms: int, *, seed: int = 7, run: str = "short", factor: float = 5.0
) -> SimConfig:
    """Ten rooms for 90 s: the critical scripts, a last will, a reboot, junk (the test's)."""
    return replace(
        demo_config(start_ms, seed=seed, run=run, factor=factor),
        lamps=10,
        duration_s=90.0,
        plan=SHORT_PLAN,
        junk_plan=tuple((9, reason, 10 + 5 * i) for i, (_, reason, _) in enumerate(DEMO_JUNK)),
    )
