"""aserve.reload.worker's helpers: the traceback the error page shows leaves out aserve's own
frames, wherever in the package they are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import aserve
from aserve.errorpage import user_traceback
from aserve.errors import AppLoadError
from aserve.loader import load
from aserve.reload.ipc import IPCError, decode

AFTER_AN_IMPORT = (
    "import os\n\n\ndef helper():\n    raise RuntimeError('database is down')\n\n\nhelper()\n"
)


def test_frames_of_the_loader_and_importlib_are_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_site_app.py").write_text(AFTER_AN_IMPORT)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(AppLoadError) as caught:
        load("broken_site_app:app")
    assert caught.value.__cause__ is not None
    text = user_traceback(caught.value.__cause__)
    assert f'File "{tmp_path / "broken_site_app.py"}", line 8, in <module>' in text
    assert "line 5, in helper" in text
    assert "RuntimeError: database is down" in text
    assert os.path.dirname(aserve.__file__) not in text  # aserve/loader.py
    assert "importlib" not in text


def test_frames_of_the_reload_package_are_left_out_too() -> None:
    with pytest.raises(IPCError) as caught:
        decode(b"not a message")
    text = user_traceback(caught.value)
    assert __file__ in text
    assert os.path.dirname(aserve.__file__) not in text  # aserve/reload/ipc.py
    assert "IPCError: not a JSON message" in text
