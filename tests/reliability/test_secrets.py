"""Credentials never leak: not in reprs, logs, error messages or a State's JSON.

The secrets checked are an S3 secret key (storage options or the AWS environment), a
password in a storage URL, and signing keys (arguments or ``RESULTSTORE_SIGNING_KEY*``).
Logs are captured at DEBUG from every logger (botocore, s3fs, aiohttp, resultstore)
while operations succeed and while they fail (wrong credentials, unreachable endpoint,
a signature that does not verify). The CLI's output is tested with the CLI.
"""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import states
from ports import free_port
from resultstore import (
    ResultStore,
    ResultStoreError,
    RetryPolicy,
    SignatureError,
    StorageError,
    StorageUnavailableError,
)
from resultstore.settings import get_settings
from seaweedfs import SeaweedFS

WRONG_SECRET = "wrong-Secret-4b1d9e"
URL_PASSWORD = "url-Passw0rd-77c3"
SIGNING_KEY = "signing-KEY-current-7f3a"
OLD_SIGNING_KEY = "signing-KEY-old-19c2"
FAST = RetryPolicy(attempts=2, delay=0.01)
# One botocore attempt and short timeouts: failing operations fail fast.
FAST_CLIENT = {"connect_timeout": 1, "read_timeout": 2, "retries": {"max_attempts": 1}}


def assert_hidden(texts: Iterable[str], secrets: Iterable[str]) -> None:
    joined = "\n".join(texts)
    for secret in secrets:
        assert secret not in joined, f"{secret!r} leaked in:\n{joined[:4000]}"


def everything_about(exc: BaseException) -> list[str]:
    """The message, repr and full formatted traceback (causes included) of ``exc``."""
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))]


def failure_of(action: Any) -> ResultStoreError:
    with pytest.raises(ResultStoreError) as caught:
        action()
    assert "\n" not in str(caught.value)
    return caught.value


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record of every library, at DEBUG."""
    caplog.set_level(logging.DEBUG)
    yield caplog


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [caplog.text, *(str(r.args) for r in caplog.records)]


def s3_options(s3_server: SeaweedFS, **changes: Any) -> dict[str, Any]:
    options = s3_server.storage_options()
    options["config_kwargs"] = {**options["config_kwargs"], **FAST_CLIENT}
    options.update(changes)
    return options


def failed_state(exc: BaseException) -> states.State[Any]:
    """The Failed state a run raising ``exc`` ends in, its exception persisted."""
    exceptions = ResultStore(f"memory://failures-{uuid.uuid4().hex[:8]}")
    return anyio.run(lambda: states.exception_to_failed_state(exc, exceptions, write_result=True))


def shown_by(store: ResultStore) -> list[str]:
    """Everything a store and a result of it show the world."""
    result = store.create_result({"x": 1}, key="shown/result")
    result.write()
    completed: states.State[Any] = states.Completed(data=result)
    return [
        repr(store),
        str(store.storage_url),
        repr(store.store),
        str(store.store.url),
        repr(result),
        json.dumps(result.to_reference()),
        completed.model_dump_json(),
        repr(completed),
    ]


# -- S3 secret keys --------------------------------------------------------------------


def test_the_s3_secret_stays_out_of_reprs_logs_and_state_json(
    s3_server: SeaweedFS, s3_bucket: str, debug_logs: pytest.LogCaptureFixture
) -> None:
    secret = s3_server.secret_key
    with ResultStore(
        f"s3://{s3_bucket}/secrets-{uuid.uuid4().hex[:8]}",
        storage_options=s3_options(s3_server),
        retry=FAST,
    ) as store:
        shown = shown_by(store)
        key = store.write([1, 2, 3])
        assert store.read(key).result == [1, 2, 3]
        assert store.exists(key) and store.keys("shown/") == ["shown/result"]
        assert [m.storage_key for m in store.list()] == sorted([key, "shown/result"])
        assert store.delete(key) is not False  # S3 does not say: None
        missing = failure_of(lambda: store.read("not/there"))

    assert debug_logs.records, "nothing was logged: the check would prove nothing"
    assert_hidden([*shown, *everything_about(missing), *logged(debug_logs)], [secret])


def test_a_wrong_s3_secret_is_reported_without_echoing_it(
    s3_server: SeaweedFS, s3_bucket: str, debug_logs: pytest.LogCaptureFixture
) -> None:
    options = s3_options(s3_server, secret=WRONG_SECRET)
    with ResultStore(f"s3://{s3_bucket}/denied", storage_options=options, retry=FAST) as store:
        errors = [
            failure_of(lambda: store.write(1, key="k")),
            failure_of(lambda: store.read("k")),
            failure_of(lambda: store.exists("k")),
            failure_of(lambda: store.keys()),
        ]
        failed = failed_state(errors[0])
        shown = shown_by_without_writing(store)

    assert all(isinstance(e, StorageError) for e in errors)
    assert "access denied" in str(errors[0])
    texts = [*shown, failed.model_dump_json(), *logged(debug_logs)]
    for error in errors:
        texts += everything_about(error)
    assert_hidden(texts, [WRONG_SECRET, s3_server.secret_key])


def test_the_secret_from_the_aws_environment_stays_hidden_when_unreachable(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch, debug_logs: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nobody listens on it
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "some-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG_SECRET)
    store = ResultStore(
        f"s3://{s3_bucket}/p", storage_options={"config_kwargs": FAST_CLIENT}, retry=FAST
    )

    errors = [failure_of(lambda: store.read("k")), failure_of(lambda: store.write(1, key="k"))]

    assert all(isinstance(e, StorageUnavailableError) for e in errors)
    texts = [repr(store), repr(store.store), *logged(debug_logs)]
    for error in errors:
        texts += everything_about(error)
    assert_hidden(texts, [WRONG_SECRET])
    store.close()


def shown_by_without_writing(store: ResultStore) -> list[str]:
    result = store.create_result("x", key="not/written")
    return [
        repr(store),
        repr(store.store),
        repr(result),
        states.Completed(data=result).model_dump_json(),
    ]


# -- passwords in URLs ---------------------------------------------------------------


def test_credentials_in_an_s3_url_are_refused_without_echoing_them() -> None:
    error = failure_of(lambda: ResultStore(f"s3://AKIAEXAMPLE:{URL_PASSWORD}@bucket/prefix"))
    assert_hidden(everything_about(error), [URL_PASSWORD])


def test_a_url_password_stays_out_of_the_result_store_and_state_json(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    store = ResultStore(f"memory://user:{URL_PASSWORD}@secrets-{uuid.uuid4().hex[:8]}")
    texts = shown_by(store)
    texts += everything_about(failure_of(lambda: store.read("absent", retry=False)))
    assert_hidden([*texts, *logged(debug_logs)], [URL_PASSWORD])


def _closed_port_url() -> str:
    return f"http://user:{URL_PASSWORD}@127.0.0.1:{free_port()}/results"


def test_a_url_password_of_a_generic_fsspec_store_stays_out_of_what_resultstore_shows() -> None:
    store = ResultStore(_closed_port_url())
    result = store.create_result("x", key="k")
    assert_hidden(
        [
            repr(store),
            store.storage_url,
            repr(result),
            states.Completed(data=result).model_dump_json(),
        ],
        [URL_PASSWORD],
    )


def test_a_url_password_of_a_generic_fsspec_store_stays_out_of_its_repr_and_errors() -> None:
    store = ResultStore(_closed_port_url(), retry=FAST)
    texts = [repr(store.store), store.store.url]
    for action in (lambda: store.read("k"), lambda: store.write(1, key="k")):
        texts += everything_about(failure_of(action))
    assert_hidden(texts, [URL_PASSWORD])


# -- signing keys ----------------------------------------------------------------------


def test_signing_keys_stay_out_of_reprs_logs_errors_and_state_json(
    tmp_path: Path, debug_logs: pytest.LogCaptureFixture
) -> None:
    url = (tmp_path / "signed").as_uri()
    store = ResultStore(url, signing_key=SIGNING_KEY, old_signing_keys=(OLD_SIGNING_KEY,))
    texts = [*shown_by(store), repr(store._signer), str(store._signer)]
    key = store.write("signed")
    assert store.read(key).metadata.signed

    ResultStore(url).write("unsigned", key="unsigned")
    ResultStore(url, signing_key="someone-else-0123456789abcdef").write("forged", key="forged")
    refused = [failure_of(lambda: store.read("unsigned")), failure_of(lambda: store.read("forged"))]
    assert all(isinstance(e, SignatureError) for e in refused)
    for error in refused:
        texts += everything_about(error)
    failed = failed_state(refused[1])
    texts.append(failed.model_dump_json())
    assert_hidden([*texts, *logged(debug_logs)], [SIGNING_KEY, OLD_SIGNING_KEY])


def test_signing_keys_from_the_environment_stay_out_of_settings_and_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESULTSTORE_SIGNING_KEY", SIGNING_KEY)
    monkeypatch.setenv("RESULTSTORE_SIGNING_KEYS_OLD", json.dumps([OLD_SIGNING_KEY]))
    settings = get_settings()
    store = ResultStore((tmp_path / "env").as_uri())
    assert store.read(store.write(1)).metadata.signed
    assert_hidden(
        [repr(settings), str(settings), settings.model_dump_json(), *shown_by(store)],
        [SIGNING_KEY, OLD_SIGNING_KEY],
    )


def test_a_secret_in_resultstore_storage_options_stays_out_of_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESULTSTORE_STORAGE_OPTIONS", json.dumps({"secret": WRONG_SECRET}))
    settings = get_settings()
    assert_hidden([repr(settings), str(settings), settings.model_dump_json()], [WRONG_SECRET])
