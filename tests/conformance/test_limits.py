"""The server's limits: a typed error to the client that broke one, the same on every route."""

from __future__ import annotations

import numpy as np
import pytest

from fastenv.errors import FrameTooLarge, LimitExceeded

SERVER_ARGS = ("--max-array-elements", "1000")


def test_an_array_over_the_element_limit_is_refused_and_the_session_goes_on(env) -> None:
    with pytest.raises(FrameTooLarge) as caught:
        env.call("echo", np.zeros(5000, np.float32))
    assert isinstance(caught.value, LimitExceeded)
    small = np.arange(1000, dtype=np.float32)
    for _ in range(2):  # a layout of the same name is still usable
        assert np.array_equal(env.call("echo", small), small)
    with pytest.raises(FrameTooLarge):  # and the limit still holds after it
        env.call("echo", np.zeros(1001, np.float32))
