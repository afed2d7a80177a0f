"""The kubelet emulator: upstream's expansion table, env order, secrets verbatim, files, argv."""

from __future__ import annotations

import base64
from collections import ChainMap
from collections.abc import Mapping
from typing import Any

import pytest

from tests.fakes.kubelet_env import (
    ContainerConfigError,
    VolumeMountError,
    command_line,
    container_env,
    expand,
    mounted_files,
    secret_strings,
)

PLATFORM_KEY = "sk-platform-secret"

# kubernetes/kubernetes third_party/forked/golang/expansion/expand_test.go, doExpansionTest.
UPSTREAM_CONTEXT = {
    "VAR_A": "A",
    "VAR_B": "B",
    "VAR_C": "C",
    "VAR_REF": "$(VAR_A)",
    "VAR_EMPTY": "",
}
UPSTREAM_CASES = [
    ("whole string", "$(VAR_A)", "A"),
    ("repeat", "$(VAR_A)-$(VAR_A)", "A-A"),
    ("beginning", "$(VAR_A)-1", "A-1"),
    ("middle", "___$(VAR_B)___", "___B___"),
    ("end", "___$(VAR_C)", "___C"),
    ("compound", "$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C"),
    ("escape & expand", "$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
    ("compound escape", "$$(VAR_A)_$$(VAR_B)", "$(VAR_A)_$(VAR_B)"),
    ("mixed in escapes", "f000-$$VAR_A", "f000-$VAR_A"),
    ("backslash escape ignored", "foo\\$(VAR_C)bar", "foo\\Cbar"),
    ("backslash escape ignored 2", "foo\\\\$(VAR_C)bar", "foo\\\\Cbar"),
    ("lots of backslashes", "foo\\\\\\\\$(VAR_A)bar", "foo\\\\\\\\Abar"),
    ("nested var references", "$(VAR_A$(VAR_B))", "$(VAR_A$(VAR_B))"),
    ("nested var references second type", "$(VAR_A$(VAR_B)", "$(VAR_A$(VAR_B)"),
    ("value is a reference", "$(VAR_REF)", "$(VAR_A)"),
    ("value is a reference x 2", "%%$(VAR_REF)--$(VAR_REF)%%", "%%$(VAR_A)--$(VAR_A)%%"),
    ("empty var", "foo$(VAR_EMPTY)bar", "foobar"),
    ("unterminated expression", "foo$(VAR_Awhoops!", "foo$(VAR_Awhoops!"),
    ("expression without operator", "f00__(VAR_A)__", "f00__(VAR_A)__"),
    ("shell special vars pass through", "$?_boo_$!", "$?_boo_$!"),
    ("bare operators are ignored", "$VAR_A", "$VAR_A"),
    ("undefined vars are passed through", "$(VAR_DNE)", "$(VAR_DNE)"),
    ("multiple (even) operators, var undefined", "$$$$$$(BIG_MONEY)", "$$$(BIG_MONEY)"),
    ("multiple (even) operators, var defined", "$$$$$$(VAR_A)", "$$$(VAR_A)"),
    ("multiple (odd) operators, var undefined", "$$$$$$$(GOOD_ODDS)", "$$$$(GOOD_ODDS)"),
    ("multiple (odd) operators, var defined", "$$$$$$$(VAR_A)", "$$$A"),
    ("missing open expression", "$VAR_A)", "$VAR_A)"),
    ("shell syntax ignored", "${VAR_A}", "${VAR_A}"),
    ("trailing incomplete expression not consumed", "$(VAR_B)_______$(A", "B_______$(A"),
    ("trailing incomplete expression, no content", "$(VAR_C)_______$(", "C_______$("),
    ("operator at end of input string is preserved", "$(VAR_A)foobarzab$", "Afoobarzab$"),
    ("shell escaped incomplete expr", "foo-\\$(VAR_A", "foo-\\$(VAR_A"),
    ("lots of $( in middle", "--$($($($($--", "--$($($($($--"),
    ("lots of $( in beginning", "$($($($($--foo$(", "$($($($($--foo$("),
    ("lots of $( at end", "foo0--$($($($(", "foo0--$($($($("),
    ("escaped operators in variable names are not escaped", "$(foo$$var)", "$(foo$$var)"),
    ("newline not expanded", "\n", "\n"),
]
# Behaviours the upstream table implies but does not spell out.
EXTRA_CASES = [
    ("stray $( swallows up to the next )", "$( $(VAR_A)", "$( $(VAR_A)"),
    ("$( resumes after its ( when no ) follows", "$($$", "$($"),
    ("empty name is kept", "$()", "$()"),
    ("$ before a multi-byte character is kept (k8s#136325)", "5$—$(VAR_A)", "5$—A"),
]


@pytest.mark.parametrize(("name", "value", "expected"), UPSTREAM_CASES + EXTRA_CASES)
@pytest.mark.parametrize(
    "lookup",
    [
        UPSTREAM_CONTEXT,
        # TestMappingDual: the same answers when the variables come from two maps.
        ChainMap(
            {"VAR_A": "A", "VAR_EMPTY": ""}, {"VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)"}
        ),
    ],
    ids=["single", "dual"],
)
def test_expand_matches_upstream(
    name: str, value: str, expected: str, lookup: Mapping[str, str]
) -> None:
    assert expand(value, lookup) == expected, name


def test_map_reference_chains_through_earlier_entries() -> None:
    """Upstream TestMapReference: each entry sees the expanded value of the ones before it."""
    container = {
        "env": [
            {"name": "FOO", "value": "bar"},
            {"name": "ZOO", "value": "$(FOO)-1"},
            {"name": "BLU", "value": "$(ZOO)-2"},
        ]
    }
    env = container_env(container, secrets={}, config_maps={})
    assert env == {"FOO": "bar", "ZOO": "bar-1", "BLU": "bar-1-2"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_secret_strings_merge_data_and_string_data() -> None:
    secret = {
        "kind": "Secret",
        "data": {"A": b64("from data"), "B": b64("old")},
        "stringData": {"B": "new", "C": "$(X)"},
    }
    assert secret_strings(secret) == {"A": "from data", "B": "new", "C": "$(X)"}
    config_map = {"kind": "ConfigMap", "data": {"K": "dg=="}}
    assert secret_strings(config_map) == {"K": "dg=="}  # ConfigMap data is plain text


AGENT_SECRETS = {"agent": {"LLM_API_KEY": PLATFORM_KEY, "BOT_TOKEN": "123:abc"}}


def agent_env(*env: dict[str, Any], **kwargs: Any) -> dict[str, str]:
    container = {"envFrom": [{"secretRef": {"name": "agent"}}], "env": list(env)}
    return container_env(container, secrets=AGENT_SECRETS, config_maps={}, **kwargs)


def test_a_literal_value_expands_references_to_the_secret() -> None:
    """The incident: a system prompt naming $(LLM_API_KEY) received the platform's key."""
    env = agent_env({"name": "SYSTEM_PROMPT", "value": "Never say $(LLM_API_KEY)."})
    assert env["SYSTEM_PROMPT"] == f"Never say {PLATFORM_KEY}."


def test_an_escaped_reference_arrives_as_written_once() -> None:
    env = agent_env({"name": "SYSTEM_PROMPT", "value": "Never say $$(LLM_API_KEY)."})
    assert env["SYSTEM_PROMPT"] == "Never say $(LLM_API_KEY)."


def test_env_overrides_env_from_and_sees_the_value_it_replaces() -> None:
    env = agent_env({"name": "BOT_TOKEN", "value": "wrapped-$(BOT_TOKEN)"})
    assert env["BOT_TOKEN"] == "wrapped-123:abc"
    assert env["LLM_API_KEY"] == PLATFORM_KEY


def test_a_reference_to_a_later_entry_stays_literal() -> None:
    env = agent_env({"name": "FIRST", "value": "<$(SECOND)>"}, {"name": "SECOND", "value": "2"})
    assert env["FIRST"] == "<$(SECOND)>"


def test_later_env_from_sources_override_earlier_ones_with_prefix() -> None:
    container = {
        "envFrom": [
            {"configMapRef": {"name": "defaults"}},
            {"secretRef": {"name": "agent"}},
            {"secretRef": {"name": "agent"}, "prefix": "AGENT_"},
        ]
    }
    config_maps = {"defaults": {"LLM_API_KEY": "placeholder", "MODE": "polling"}}
    env = container_env(container, secrets=AGENT_SECRETS, config_maps=config_maps)
    assert env["LLM_API_KEY"] == PLATFORM_KEY
    assert env["MODE"] == "polling"
    assert env["AGENT_BOT_TOKEN"] == "123:abc"


def test_key_refs_are_taken_verbatim_never_expanded() -> None:
    secrets = {**AGENT_SECRETS, "user": {"prompt": "Say $(LLM_API_KEY) and $$(X)"}}
    config_maps = {"texts": {"greeting": "Hi $(BOT_TOKEN)"}}
    container = {
        "envFrom": [{"secretRef": {"name": "agent"}}],
        "env": [
            {"name": "PROMPT", "valueFrom": {"secretKeyRef": {"name": "user", "key": "prompt"}}},
            {"name": "HI", "valueFrom": {"configMapKeyRef": {"name": "texts", "key": "greeting"}}},
        ],
    }
    env = container_env(container, secrets=secrets, config_maps=config_maps)
    assert env["PROMPT"] == "Say $(LLM_API_KEY) and $$(X)"
    assert env["HI"] == "Hi $(BOT_TOKEN)"


def test_invalid_names_pass_through_since_v1_30_and_were_skipped_before() -> None:
    container = {"envFrom": [{"configMapRef": {"name": "mixed"}}]}
    config_maps = {"mixed": {"GOOD": "1", "1bad": "2", "app.yaml": "3"}}
    modern = container_env(container, secrets={}, config_maps=config_maps)
    legacy = container_env(container, secrets={}, config_maps=config_maps, skip_invalid_names=True)
    assert modern == {"GOOD": "1", "1bad": "2", "app.yaml": "3"}
    assert legacy == {"GOOD": "1", "app.yaml": "3"}  # only a leading digit was invalid


def test_optional_references_are_skipped_and_required_ones_fail() -> None:
    ref = {"name": "gone", "key": "k", "optional": True}
    container = {
        "envFrom": [{"secretRef": {"name": "gone", "optional": True}}],
        "env": [
            {"name": "A", "valueFrom": {"secretKeyRef": ref}},
            {"name": "B", "valueFrom": {"configMapKeyRef": {**ref, "name": "cm"}}},
        ],
    }
    assert container_env(container, secrets={}, config_maps={"cm": {}}) == {}

    missing_secret = {"envFrom": [{"secretRef": {"name": "gone"}}]}
    with pytest.raises(ContainerConfigError, match="gone"):
        container_env(missing_secret, secrets={}, config_maps={})
    missing_key = {"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
    with pytest.raises(ContainerConfigError, match="couldn't find key k"):
        container_env(missing_key, secrets={"s": {}}, config_maps={})


def test_service_env_is_a_fallback_and_is_appended() -> None:
    services = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "BOT_TOKEN": "never"}
    env = agent_env(
        {"name": "API", "value": "https://$(KUBERNETES_SERVICE_HOST)"}, service_env=services
    )
    assert env["API"] == "https://10.96.0.1"
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert env["BOT_TOKEN"] == "123:abc"


POD_SPEC = {
    "volumes": [
        {"name": "creds", "secret": {"secretName": "agent"}},
        {
            "name": "prompt",
            "configMap": {"name": "texts", "items": [{"key": "prompt", "path": "conf/prompt.txt"}]},
        },
        {"name": "maybe", "secret": {"secretName": "gone", "optional": True}},
        {"name": "tmp", "emptyDir": {}},
    ]
}
TEXTS = {"texts": {"prompt": "Say $(LLM_API_KEY)", "other": "unused"}}


def test_mounted_files_honour_items_sub_path_and_optional() -> None:
    container = {
        "volumeMounts": [
            {"name": "creds", "mountPath": "/var/run/creds"},
            {"name": "creds", "mountPath": "/etc/token", "subPath": "BOT_TOKEN"},
            {"name": "prompt", "mountPath": "/etc/agent"},
            {"name": "prompt", "mountPath": "/srv", "subPath": "conf"},
            {"name": "maybe", "mountPath": "/opt/maybe"},
            {"name": "tmp", "mountPath": "/tmp"},
        ]
    }
    files = mounted_files(POD_SPEC, container, secrets=AGENT_SECRETS, config_maps=TEXTS)
    assert files == {
        "/var/run/creds/LLM_API_KEY": PLATFORM_KEY,
        "/var/run/creds/BOT_TOKEN": "123:abc",
        "/etc/token": "123:abc",
        "/etc/agent/conf/prompt.txt": "Say $(LLM_API_KEY)",  # literal: files are not expanded
        "/srv/prompt.txt": "Say $(LLM_API_KEY)",
    }


def test_a_deeper_mount_hides_what_a_shallower_one_put_there() -> None:
    container = {
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/var/run/creds/LLM_API_KEY"},
            {"name": "creds", "mountPath": "/var/run/creds"},
        ]
    }
    files = mounted_files(POD_SPEC, container, secrets=AGENT_SECRETS, config_maps={})
    assert files == {"/var/run/creds/BOT_TOKEN": "123:abc"}


def test_missing_volume_sources_fail_the_mount() -> None:
    container = {"volumeMounts": [{"name": "prompt", "mountPath": "/etc/agent"}]}
    with pytest.raises(VolumeMountError, match="texts"):
        mounted_files(POD_SPEC, container, secrets={}, config_maps={})
    with pytest.raises(VolumeMountError, match="non-existent key: prompt"):
        mounted_files(POD_SPEC, container, secrets={}, config_maps={"texts": {}})


def test_command_and_args_are_expanded_against_the_final_env() -> None:
    env = agent_env({"name": "PORT", "value": "8080"})
    container = {"command": ["serve", "--port=$(PORT)"], "args": ["$(LLM_API_KEY)", "$$(PORT)"]}
    assert command_line(container, env) == ["serve", "--port=8080", PLATFORM_KEY, "$(PORT)"]
    only_args = {"args": ["runtime", "$(NOPE)"]}
    assert command_line(only_args, env, entrypoint=["/entry"]) == ["/entry", "runtime", "$(NOPE)"]


def test_command_replaces_entrypoint_and_drops_cmd_args_replace_cmd() -> None:
    image = {"entrypoint": ["python", "-m"], "cmd": ["manager_bot"]}
    assert command_line({}, {}, **image) == ["python", "-m", "manager_bot"]
    assert command_line({"args": ["runtime"]}, {}, **image) == ["python", "-m", "runtime"]
    assert command_line({"command": ["sh"]}, {}, **image) == ["sh"]
    assert command_line({"command": ["sh"], "args": ["-c", "x"]}, {}, **image) == ["sh", "-c", "x"]
