"""The README's walkthrough (ops/walkthrough), played against a real server as a newcomer
would play it: every command answers what the README shows."""

from __future__ import annotations

import subprocess
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
