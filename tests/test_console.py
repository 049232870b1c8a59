import io
import os
import types
import warnings

from deltadit.console import Stages, quiet_third_party, track


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_in_a_log_is_plain_lines():
    log = io.StringIO()
    assert list(track(range(3), "denoise", unit="steps", stream=log)) == [0, 1, 2]
    with Stages(2, stream=log) as stages:
        stages.start("load")
        stages.start("split")
    text = log.getvalue()
    assert text.startswith("denoise: 3/3 steps, ") and "[1/2] load\n[2/2] split\n" in text
    assert "\r" not in text and "\x1b" not in text


def test_progress_on_a_terminal_is_a_live_bar():
    tty = Terminal()
    assert list(track(range(3), "denoise", stream=tty)) == [0, 1, 2]
    assert "\r" in tty.getvalue()


def _module_named(name: str):
    """A module called ``name`` whose emit() warns, so the warning is attributed to that module."""
    module = types.ModuleType(name)
    exec(f"import warnings\ndef emit():\n    warnings.warn('from {name}', FutureWarning)", module.__dict__)
    return module


def test_third_party_warnings_hidden_unless_verbose(monkeypatch):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    third, ours = _module_named("diffusers.x"), _module_named("deltadit.x")
    for verbose, shown in ((False, ["from deltadit.x"]), (True, ["from diffusers.x", "from deltadit.x"])):
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            with quiet_third_party(verbose):
                third.emit()
                ours.emit()
                assert (os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1") is not verbose
        assert [str(w.message) for w in got] == shown
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ  # restored on exit
