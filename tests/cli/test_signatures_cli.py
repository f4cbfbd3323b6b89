"""The command line at trust boundaries: verified signatures, refused serializers, conditions."""

from __future__ import annotations

import json

from cli_harness import Cli

from resultstore import ResultStore

KEY = "cli-signing-key-0123456789"


def test_inspect_says_whether_the_signature_was_verified(file_cli: Cli) -> None:
    ResultStore(file_cli.url, signing_key=KEY).write([1], key="signed")
    ResultStore(file_cli.url).write([2], key="plain")
    with_key = {"RESULTSTORE_SIGNING_KEY": KEY}

    assert json.loads(file_cli.run("inspect", "signed", env=with_key).stdout)["signature"] == (
        "verified"
    )
    unchecked = json.loads(file_cli.run("inspect", "signed").stdout)
    assert unchecked["signed"] is True
    assert unchecked["signature"].startswith("not verified (no signing key configured")
    assert json.loads(file_cli.run("inspect", "plain").stdout)["signature"] == "none"
    file_cli.fails("inspect", "plain", code=5, env=with_key, says=["'plain'", "not signed"])

    other = {"RESULTSTORE_SIGNING_KEY": "another-key-0123456789"}
    file_cli.fails("inspect", "signed", code=5, env=other, says=["'signed'", "does not verify"])


def test_check_without_a_key_says_it_verified_no_signature(file_cli: Cli) -> None:
    ResultStore(file_cli.url, signing_key=KEY).write([1], key="signed")
    out = file_cli.run("check").stdout
    assert "1 ok, 0 failed" in out
    assert "signatures were not verified: no signing key is configured" in out


def test_check_require_signed_fails_unsigned_and_unverifiable_records(file_cli: Cli) -> None:
    ResultStore(file_cli.url, signing_key=KEY).write([1], key="signed")
    ResultStore(file_cli.url).write([2], key="plain")

    without_key = file_cli.fails("check", "--require-signed", code=5, says=["2 record(s) failed"])
    assert "'plain' in" in without_key.stdout and "it is not signed" in without_key.stdout
    assert "its signature cannot be verified" in without_key.stdout

    with_key = file_cli.fails(
        "check", "--require-signed", code=5, env={"RESULTSTORE_SIGNING_KEY": KEY}, says=["'plain'"]
    )
    assert "1 ok, 1 failed" in with_key.stdout

    ResultStore(file_cli.url).delete("plain")
    done = file_cli.run("check", "--require-signed", env={"RESULTSTORE_SIGNING_KEY": KEY})
    assert "1 ok, 0 failed" in done.stdout


def test_a_json_configured_cli_refuses_a_pickle_record(file_cli: Cli) -> None:
    ResultStore(file_cli.url).write({"a": 1}, key="pickled")
    file_cli.fails(
        "get",
        "pickled",
        code=5,
        env={"RESULTSTORE_SERIALIZER": "json"},
        says=["'pickled'", "'pickle' serializer", "RESULTSTORE_ALLOWED_SERIALIZERS"],
    )
    allowed = {"RESULTSTORE_SERIALIZER": "json", "RESULTSTORE_ALLOWED_SERIALIZERS": "pickle"}
    assert json.loads(file_cli.run("get", "pickled", env=allowed).stdout) == {"a": 1}


def test_put_if_absent_creates_once_and_exits_6_after(file_cli: Cli) -> None:
    file_cli.run("put", "once", "--json", "1", "--if-absent")
    file_cli.fails(
        "put", "once", "--json", "2", "--if-absent", code=6, says=["'once'", "already exists"]
    )
    assert file_cli.run("get", "once").stdout == "1\n"
