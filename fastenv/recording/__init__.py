"""Recording a server's sessions to MCAP (``fastenv serve --record PATH``) and reading them back.

:class:`~fastenv.recording.recorder.Recorder` writes; :mod:`fastenv.recording.reader`
reads a recording's calls; :mod:`fastenv.recording.format` says what a recording holds.
"""

from fastenv.recording.reader import RecordedCall, read_calls
from fastenv.recording.recorder import Recorder

__all__ = ["RecordedCall", "Recorder", "read_calls"]
