"""What each adapter loads: the receiver runs without the processor, and the API reaches
the state only through the processor's owned-state interface."""

from __future__ import annotations

import subprocess
import sys


def loaded_by(module: str) -> set[str]:
    """The `service` modules that importing `module` loads, in a fresh interpreter."""
    script = (
        f"import sys, {module}\n"
        "print('\\n'.join(name for name in sys.modules if name.startswith('service')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.split())


def test_the_receiver_does_not_load_the_processor() -> None:
    loaded = loaded_by("service.receiver.app")
    assert "service.receiver.app" in loaded
    assert not {name for name in loaded if name.startswith("service.processor")}


def test_the_api_sees_only_the_owned_states() -> None:
    loaded = loaded_by("service.api.app")
    assert "service.api.app" in loaded
    assert "service.processor.runner" not in loaded
    assert "service.processor.folding" not in loaded
