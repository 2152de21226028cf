"""jetchat.settings: reading JETCHAT_* variables, the messages for bad or unknown ones, and
the settings reference made from the field descriptions."""

from __future__ import annotations

from pathlib import Path

import pytest

from jetchat.settings import (
    OTHER_VARIABLES,
    Settings,
    described,
    from_env,
    help_text,
    markdown_table,
    unknown_variables,
)


def bad(env: dict[str, str]) -> str:
    with pytest.raises(SystemExit) as info:
        from_env(env)
    return str(info.value.code)


def test_nothing_set_gives_the_defaults() -> None:
    assert from_env({}) == Settings()


def test_values_are_read_from_text() -> None:
    s = from_env(
        {
            "JETCHAT_PORT": " 9000 ",
            "JETCHAT_POLL_TIMEOUT_S": "2.5",
            "JETCHAT_LOG_LEVEL": "DEBUG",
            "JETCHAT_WS_ALLOWED_ORIGINS": " https://a.example ",
            "HOME": "/root",
        }
    )
    assert (s.port, s.poll_timeout_s, s.log_level) == (9000, 2.5, "debug")
    assert s.ws_allowed_origins == " https://a.example "  # strings are taken as they are


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True),
        ("false", False), ("False", False), ("0", False), ("no", False), ("off", False),
    ],
)  # fmt: skip
def test_booleans(text: str, value: bool) -> None:
    assert from_env({"JETCHAT_LOG_JSON": text}).log_json is value


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JETCHAT_PORT": "abc"}, "JETCHAT_PORT=abc: expected an integer from 0 to 65535"),
        ({"JETCHAT_PORT": "65536"}, "JETCHAT_PORT=65536: expected an integer from 0 to 65535"),
        ({"JETCHAT_LOG_JSON": "maybe"}, "JETCHAT_LOG_JSON=maybe: expected true or false"),
        (
            {"JETCHAT_POLL_TIMEOUT_S": "0"},
            "JETCHAT_POLL_TIMEOUT_S=0: expected a number of seconds, above 0",
        ),
        (
            {"JETCHAT_MAX_GROUP_MEMBERS": "501"},
            "JETCHAT_MAX_GROUP_MEMBERS=501: expected an integer from 2 to 500",
        ),
        ({"JETCHAT_MAX_GROUP_MEMBERS": "1"}, "JETCHAT_MAX_GROUP_MEMBERS=1: expected an integer"),
        ({"JETCHAT_REPLAY_BYTES": "-5"}, "JETCHAT_REPLAY_BYTES=-5: expected an integer of bytes"),
        ({"JETCHAT_LOG_LEVEL": "loud"}, "JETCHAT_LOG_LEVEL=loud: expected one of "),
        ({"JETCHAT_FRONTENDS": "ws,sse"}, "JETCHAT_FRONTENDS=ws,sse: expected some of ws, "),
        ({"JETCHAT_DATA_DIR": ""}, "JETCHAT_DATA_DIR=: expected a non-empty string"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_it_accepts(
    env: dict[str, str], message: str
) -> None:
    assert bad(env).startswith(f"jetchat: bad configuration: {message}")


def test_an_override_is_named_as_a_field() -> None:
    with pytest.raises(SystemExit, match=r"bad configuration: port=-1: expected an integer"):
        from_env({"JETCHAT_PORT": "8001"}, port=-1)


def test_an_unknown_variable_gets_the_closest_known_name() -> None:
    warnings = unknown_variables(
        {
            "JETCHAT_WS_ALLOWD_ORIGINS": "*",
            "JETCHAT_POLL_TIMEOUT": "5",
            "JETCHAT_NOTHING_LIKE_IT": "1",
            "JETCHAT_PORT": "8001",
            "PATH": "/bin",
        }
    )
    assert warnings == [
        "JETCHAT_NOTHING_LIKE_IT is not a jetchat setting; jetchat serve --help lists them",
        "JETCHAT_POLL_TIMEOUT is not a jetchat setting; did you mean JETCHAT_POLL_TIMEOUT_S?",
        "JETCHAT_WS_ALLOWD_ORIGINS is not a jetchat setting; "
        "did you mean JETCHAT_WS_ALLOWED_ORIGINS?",
    ]


def test_variables_read_elsewhere_are_not_unknown() -> None:
    assert unknown_variables(dict.fromkeys(OTHER_VARIABLES, "x")) == []
    assert unknown_variables({"JETCHAT_CASANDRA_HOME": "x"}) == [
        "JETCHAT_CASANDRA_HOME is not a jetchat setting; did you mean JETCHAT_CASSANDRA_HOME?"
    ]


def test_every_setting_says_what_it_means() -> None:
    settings = described()
    assert len(settings) == len(Settings.__struct_fields__)
    assert [d.variable for d in settings if not d.meaning] == []
    assert all("\n" not in d.meaning for d in settings)


def test_the_help_lists_every_variable_with_default_and_meaning() -> None:
    text = help_text()
    for d in described():
        assert f"  {d.variable}={d.default}\n" in text + "\n"
    assert "JETCHAT_POLL_TIMEOUT_S=25\n      longest a long poll is held" in text
    assert "JETCHAT_TOKEN_TTL_S=2592000 (30 d)" in text
    assert max(len(line) for line in text.splitlines() if line.startswith("      ")) <= 79


def test_the_markdown_table_has_a_row_per_setting() -> None:
    rows = markdown_table().splitlines()
    assert len(rows) == 2 + len(Settings.__struct_fields__)
    assert "| `JETCHAT_NATS_URL` | empty | NATS server(s), comma-separated; " in rows[5]
    assert all(row.count(" | ") == 2 for row in rows[2:])


def test_the_readme_table_is_the_settings_table() -> None:
    """README.md's configuration table is ``jetchat config --markdown``: they cannot disagree."""
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    assert markdown_table().strip() in readme
