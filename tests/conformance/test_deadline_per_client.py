"""The deadline tests of ``test_deadline.py`` on a per-client server: each client controls its own env."""

from __future__ import annotations

from tests.conformance.test_deadline import (  # noqa: F401  (collected here again, on this module's server)
    test_a_cut_connection_gets_the_fallback_and_the_client_resumes_control,
    test_a_late_step_gets_the_fallback_each_period_until_the_controller_is_back,
    test_a_paused_or_killed_controller_process_gets_the_fallback,
    test_repeat_steps_the_last_action_and_observers_see_fallbacks,
)

SERVER_ARGS = ("--mode", "per-client")
