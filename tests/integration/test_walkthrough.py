"""The README's walkthrough (ops/walkthrough), played against a real server as a newcomer
would play it: every command answers what the README shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_walkthrough_plays_as_written(server):
    done = subprocess.run(
        [ROOT / "ops" / "walkthrough", server.base_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert '"display_name":"Alice"' in out
    assert 'bob < {"type":"welcome","user":"bob"' in out
    assert 'bob < {"type":"caught_up"' in out
    assert 'bob < {"type":"msg"' in out and '"text":"hi Bob"' in out
    # the sender's socket shows its own message, then sent
    assert out.index('"text":"hello!"') < out.index('bob < {"type":"sent","client_id":"b-1"')
    assert '{"sender":"alice","text":"hi Bob"}\n{"sender":"bob","text":"hello!"}' in out
    assert '"text":"hi all"' in out
    assert "\n204\n" in out
    assert '"ready":true' in out
    assert "jetchat_messages_sent_total" in out
    assert "Traceback" not in out + done.stderr


def test_the_readme_python_example_runs_as_written(server):
    """The README's Python block, run as a file after the walkthrough made Alice and Bob."""
    subprocess.run([ROOT / "ops" / "walkthrough", server.base_url], capture_output=True, check=True)
    readme = (ROOT / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("http://127.0.0.1:8000", server.base_url)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "earlier: alice hi Bob" in done.stdout
    assert "and back in Alice's own inbox: hi from Python" in done.stdout
