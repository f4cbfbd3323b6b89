"""What the conformance kit protects against: each store broken on purpose fails it.

``kit_runs.py`` puts three correct stores (the built-in memory store, ``DictStore``, and the
``kv://`` network plugin with every mixin) and thirty-seven broken copies through the whole
kit, in one pytest subprocess; each test below names the bug, the check that must catch
it, and what that check's failure says. The correct ones must pass every check.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from xml.etree import ElementTree

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


class Outcome(NamedTuple):
    kind: str  # passed, failed, error or skipped
    message: str


Outcomes = dict[str, dict[str, Outcome]]
"""Outcomes by class of kit_runs.py (``DeletesThenWrites``), then by check name."""


def _install_kv_plugin(site: Path) -> None:
    """Make ``kv://`` resolvable by URL, in the kit's processes and their children."""
    info = site / "resultstore_kit_kv-0.1.dist-info"
    info.mkdir(parents=True)
    metadata = "Metadata-Version: 2.1\nName: resultstore-kit-kv\nVersion: 0.1\n"
    (info / "METADATA").write_text(metadata)
    (info / "entry_points.txt").write_text("[resultstore.stores]\nkv = kvstore:KVStore\n")


def _parse(report: Path) -> Outcomes:
    outcomes: Outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):
        store = case.get("classname", "").rsplit(".", 1)[-1].removeprefix("Test")
        outcome = Outcome("passed", "")
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                name = "failed" if kind == "failure" else kind
                outcome = Outcome(name, found.get("message", "") or (found.text or ""))
                break
        outcomes.setdefault(store, {})[case.get("name", "")] = outcome
    return outcomes


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcomes]:
    """Run kit_runs.py once, in a subprocess; the outcome of every check of every store."""
    tmp = tmp_path_factory.mktemp("kit")
    _install_kv_plugin(tmp / "site")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RESULTSTORE_")}
    paths = [str(tmp / "site"), str(HERE), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    env["KITKV_PASSWORD"] = f"kit-{secrets.token_hex(12)}"
    report = tmp / "kit.xml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(HERE / "kit_runs.py"),
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert report.exists(), f"the kit did not run:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    yield _parse(report)


def caught(kit: Outcomes, store: str, check: str, says: str) -> None:
    checks = kit.get(store)
    assert checks, f"the kit did not run for {store}"
    outcome = checks.get(check)
    assert outcome is not None, f"{store} has no check {check}"
    failed = sorted(name for name, seen in checks.items() if seen.kind in ("failed", "error"))
    assert outcome.kind == "failed", (
        f"{check} did not catch {store}: it {outcome.kind} (failed: {failed or 'none'})"
    )
    assert says in outcome.message, f"{check} failed {store} saying: {outcome.message[:500]}"


# -- correct stores pass, and every broken store ran the whole kit -----------------------


@pytest.mark.parametrize("store", ["MemoryStore", "DictStore", "KVStore"])
def test_correct_stores_pass_every_check(kit: Outcomes, store: str) -> None:
    assert kit[store], f"the kit did not run for {store}"
    assert {name: seen for name, seen in kit[store].items() if seen.kind != "passed"} == {}


def test_the_kv_plugin_ran_every_mixin(kit: Outcomes) -> None:
    checks = set(kit["KVStore"])
    assert {
        "test_an_unreachable_backend_is_storage_unavailable_naming_key_and_url",
        "test_refused_credentials_are_access_denied_naming_key_and_url",
        "test_the_secret_never_shows",
        "test_two_processes_use_one_backend_at_once",
        "test_parent_and_child_both_use_the_store_after_fork",
    } <= checks
    assert "test_the_secret_never_shows" in kit["MemoryStore"]
    assert "test_a_missing_container_is_its_own_error_naming_key_and_url" in kit["DictStore"]


def test_every_broken_store_ran_the_whole_kit_and_failed_it(kit: Outcomes) -> None:
    broken = {store: checks for store, checks in kit.items() if store not in _CORRECT}
    assert len(broken) == 37
    for store, checks in broken.items():
        reference = "KVStore" if "test_the_secret_never_shows" in checks else "DictStore"
        assert set(checks) == set(kit[reference]), f"{store} did not run the whole kit"
        assert any(seen.kind == "failed" for seen in checks.values()), f"{store} passed"


_CORRECT = {"MemoryStore", "DictStore", "KVStore"}


# -- writes that are not atomic ------------------------------------------------------------


def test_a_write_that_deletes_then_writes_leaves_readers_a_missing_key(kit: Outcomes) -> None:
    """DELETE then INSERT: a reader polling the key between the two finds nothing."""
    caught(
        kit,
        "DeletesThenWrites",
        "test_readers_see_whole_values_while_another_task_overwrites",
        says="readers saw the key missing",
    )


def test_a_write_in_place_shows_readers_part_of_a_value(kit: Outcomes) -> None:
    """Writing over the old value chunk by chunk: readers get the first chunks only.

    Readers in other threads catch it when a thread switch falls mid-write (often, not
    always); readers in other tasks of the writer's event loop, every time.
    """
    caught(
        kit,
        "WritesInPlace",
        "test_readers_see_whole_values_while_another_task_overwrites",
        says="part of a value",
    )


def test_a_create_only_write_that_checks_first_lets_several_writers_win(
    kit: Outcomes,
) -> None:
    """SELECT, then INSERT: concurrent writers all find the key free and all "create" it."""
    caught(
        kit,
        "ChecksThenCreates",
        "test_concurrent_create_only_writers_of_one_key_exactly_one_wins",
        says="must be atomic on the backend, never check-then-write",
    )


def test_a_compare_and_swap_that_checks_first_loses_updates(kit: Outcomes) -> None:
    """Read the version, then write: two incrementers swap against the same version."""
    caught(
        kit,
        "ChecksVersionThenWrites",
        "test_concurrent_compare_and_swap_increments_lose_no_update",
        says="updates were lost",
    )


def test_a_version_that_never_changes_is_refused(kit: Outcomes) -> None:
    """Every write reports version "1": compare-and-swap can no longer tell writes apart."""
    caught(
        kit,
        "KeepsOneVersion",
        "test_stat_reports_the_size_and_version_of_what_was_written",
        says="a version must change on every write",
    )
    caught(
        kit,
        "KeepsOneVersion",
        "test_concurrent_compare_and_swap_increments_lose_no_update",
        says="updates were lost",
    )


def test_conditions_ignored_by_a_store_without_them_are_overwrites(kit: Outcomes) -> None:
    """``supports_conditional_write = False``, yet ``if_absent`` writes silently overwrite."""
    for check in ["test_create_only_writes", "test_compare_and_swap_writes"]:
        caught(kit, "OverwritesDespiteConditions", check, says="expected it to raise")


# -- wrong answers ------------------------------------------------------------------------


def test_delete_answering_true_for_a_missing_key_is_caught(kit: Outcomes) -> None:
    """``delete`` says whether the table has rows: True for any key once something is stored."""
    caught(
        kit,
        "SaysDeletedForMissingKeys",
        "test_missing_keys_answer_correctly_once_other_keys_exist",
        says="answered True for a key that held none",
    )


def test_a_ranged_read_that_ignores_the_range_is_caught(kit: Outcomes) -> None:
    """``open(key, start=, end=)`` returning the whole value."""
    caught(
        kit,
        "IgnoresRanges",
        "test_ranged_reads_return_exactly_the_range",
        says="bytes [start, end) of the value",
    )
    caught(
        kit,
        "IgnoresRanges",
        "test_reading_the_header_of_a_large_value_is_cheap",
        says="not those 65536",
    )


def test_a_ranged_read_that_fetches_the_whole_value_is_caught(kit: Outcomes) -> None:
    """Right answers, but every range costs a whole fetch, sliced afterwards."""
    caught(
        kit,
        "FetchesWholeThenSlices",
        "test_reading_the_header_of_a_large_value_is_cheap",
        says="must fetch only the range",
    )


def test_stat_reporting_a_wrong_size_is_caught(kit: Outcomes) -> None:
    """``stat`` reporting the first buffer's size, not the value's."""
    caught(
        kit,
        "MiscountsSizes",
        "test_stat_reports_the_size_and_version_of_what_was_written",
        says="bytes were written",
    )


@pytest.mark.parametrize(
    ("store", "says"),
    [("ListsPageBoundariesTwice", "twice"), ("SkipsKeysAtPageBoundaries", "missing")],
)
def test_listings_that_repeat_or_skip_keys_at_page_boundaries_are_caught(
    kit: Outcomes, store: str, says: str
) -> None:
    """A paged listing whose cursor resumes at the last key seen, or one past the next."""
    caught(kit, store, "test_list_yields_each_of_many_keys_once", says=f"{says} ['many/")


def test_a_listing_showing_versions_as_md5s_is_caught(kit: Outcomes) -> None:
    """An ``md5`` that is not the MD5 of the bytes would let copy_all skip a changed record."""
    caught(
        kit,
        "ListsVersionsAsMD5s",
        "test_list_details_show_the_keys_of_list_and_only_true_md5s",
        says="not the MD5 of its bytes",
    )


def test_a_raw_key_error_escaping_stat_is_caught(kit: Outcomes) -> None:
    """``stat`` of a missing key lets the dict's KeyError escape instead of ResultNotFoundError."""
    caught(
        kit,
        "StatLetsKeyErrorEscape",
        "test_missing_keys_answer_correctly_once_other_keys_exist",
        says="let a raw builtins.KeyError",
    )


# -- listings -----------------------------------------------------------------------------


def test_a_listing_that_never_asks_for_its_second_page_is_caught(kit: Outcomes) -> None:
    """Pages of 1,000 keys (S3's), the continuation never sent: keys 1,001 on are lost."""
    caught(
        kit,
        "ListsOnlyTheFirstPage",
        "test_list_yields_each_of_many_keys_once",
        says="100 missing",
    )


def test_details_pages_that_repeat_their_boundary_keys_are_caught(kit: Outcomes) -> None:
    """``list`` is right, the store's own ``list_details`` pages resume at the last key."""
    caught(
        kit,
        "RepeatsAPageOfDetails",
        "test_list_yields_each_of_many_keys_once",
        says="list_details('many/', start_after=None) yielded",
    )


def test_temporary_names_in_listings_are_caught(kit: Outcomes) -> None:
    """Temporary + rename keeps readers safe, but a listing during the write shows the
    temporary name (gc and copy_all would then meet a key that vanishes)."""
    caught(
        kit,
        "ListsTemporaryNames",
        "test_listings_while_keys_are_overwritten_show_each_key_once",
        says="never a temporary name",
    )


def test_a_probe_record_left_in_listings_is_caught(kit: Outcomes) -> None:
    """The record a store writes to check its backend's conditions, left behind and listed."""
    for check in ["test_create_only_writes", "test_compare_and_swap_writes"]:
        caught(kit, "LeavesItsProbeRecord", check, says="never list records of your own")


# -- MD5s, keys and versions -------------------------------------------------------------


def test_an_md5_listed_from_before_an_overwrite_is_caught(kit: Outcomes) -> None:
    """copy_all would skip the changed record: its listed MD5 is the old value's."""
    caught(
        kit,
        "ListsStaleMD5s",
        "test_list_details_show_the_keys_of_list_and_only_true_md5s",
        says="after overwrites with other bytes shows md5",
    )


def test_a_listed_md5_promise_of_part_of_the_payload_is_caught(kit: Outcomes) -> None:
    """``listed_md5`` hashing the first buffer only: the expiry index never matches."""
    caught(
        kit,
        "PromisesTheMD5OfTheFirstBuffer",
        "test_list_details_show_the_keys_of_list_and_only_true_md5s",
        says="not their MD5",
    )


@pytest.mark.parametrize(
    ("store", "says"),
    [
        ("DecodesEscapesInKeys", "'alias/x y' reads back"),
        ("FoldsCase", "'alias/Case' reads back b'alias/CASE'"),
    ],
)
def test_keys_that_alias_one_another_are_caught(kit: Outcomes, store: str, says: str) -> None:
    """``x%20y``, ``x+y`` and ``x y`` one record; ``Case`` and ``case`` one record."""
    caught(kit, store, "test_keys_differing_only_in_case_escaping_or_form_stay_apart", says=says)


def test_a_compare_and_swap_matching_another_keys_version_is_caught(kit: Outcomes) -> None:
    """``UPDATE ... WHERE version = ?`` without ``AND key = ?`` replaces another key."""
    caught(
        kit,
        "SwapsAgainstAnyKeysVersion",
        "test_compare_and_swap_writes",
        says="against the version of 'conditional/neighbour' returned",
    )


# -- readers, closing, declarations -------------------------------------------------------


def test_short_reads_before_the_end_are_caught(kit: Outcomes) -> None:
    """``read(n)`` returning one 64 KiB chunk: the core would call the record truncated."""
    caught(
        kit,
        "ReturnsShortReads",
        "test_reads_are_never_short_before_the_end",
        says="returned 65536 bytes, not 70001",
    )


def test_a_reader_that_cannot_be_closed_twice_is_caught(kit: Outcomes) -> None:
    caught(
        kit,
        "ClosesReadersOnlyOnce",
        "test_reads_are_never_short_before_the_end",
        says="a second aclose() raised builtins.RuntimeError",
    )


def test_a_store_unusable_after_aclose_is_caught(kit: Outcomes) -> None:
    caught(
        kit,
        "UnusableAfterAclose",
        "test_the_store_is_usable_after_aclose",
        says="the pool is closed",
    )


def test_a_class_without_an_interface_version_is_caught(kit: Outcomes) -> None:
    """Constructed directly, it works; ``resolve_store`` would refuse it."""
    caught(
        kit,
        "DeclaresNoInterfaceVersion",
        "test_the_store_declares_an_interface_version_this_release_speaks",
        says="interface_version is None; set `interface_version = 2`",
    )


# -- containers and credentials -----------------------------------------------------------


def test_a_missing_container_reported_as_missing_keys_is_caught(kit: Outcomes) -> None:
    caught(
        kit,
        "SaysNotFoundForAMissingContainer",
        "test_a_missing_container_is_its_own_error_naming_key_and_url",
        says="raised ResultNotFoundError",
    )


def test_a_refused_password_reported_as_unreachable_is_caught(kit: Outcomes) -> None:
    """The core would retry it for RESULTSTORE_TIMEOUT, and tell the user to check the port."""
    caught(
        kit,
        "ReportsRefusedPasswordAsUnreachable",
        "test_refused_credentials_are_access_denied_naming_key_and_url",
        says="raised StorageUnavailableError",
    )


# -- network plugins: errors, secrets, processes -------------------------------------------


def test_a_client_exception_escaping_the_store_is_caught(kit: Outcomes) -> None:
    """The client's ConnectionRefusedError reaches the caller untranslated."""
    caught(
        kit,
        "LetsClientErrorsEscape",
        "test_an_unreachable_backend_is_storage_unavailable_naming_key_and_url",
        says="let a raw builtins.ConnectionRefusedError",
    )


def test_an_unreachable_backend_reported_as_a_plain_storage_error_is_caught(
    kit: Outcomes,
) -> None:
    """A server that is down reported as StorageError: the core would not retry it."""
    caught(
        kit,
        "ReportsUnreachableAsStorageError",
        "test_an_unreachable_backend_is_storage_unavailable_naming_key_and_url",
        says="raised StorageError",
    )


@pytest.mark.parametrize(
    ("store", "says"),
    [
        ("ShowsPasswordInRepr", "repr(store) shows the secret"),
        ("ShowsPasswordInErrors", "showing the secret"),
    ],
)
def test_a_password_in_a_repr_or_an_error_is_caught(kit: Outcomes, store: str, says: str) -> None:
    """The connection string, password and all, in ``repr(store)`` or in an error message."""
    caught(kit, store, "test_the_secret_never_shows", says=says)


def test_a_connection_shared_across_fork_is_caught(kit: Outcomes) -> None:
    """A connection kept per thread without ``os.getpid()``: the forked child reuses it."""
    caught(
        kit,
        "SharesConnectionsAcrossFork",
        "test_parent_and_child_both_use_the_store_after_fork",
        says="after fork, the child could not use the store",
    )


# -- return values of the wrong type --------------------------------------------------------

TYPES = "test_every_method_returns_the_types_the_interface_names"


def test_exists_answering_with_text_is_caught(kit: Outcomes) -> None:
    """``"yes"`` is truthy, so the store's own ``if store.exists(k)`` tests pass."""
    caught(
        kit,
        "AnswersExistsWithText",
        TYPES,
        says="exists('types/k') returned str; it must return a bool (True, False)",
    )


def test_keys_listed_as_bytes_are_caught(kit: Outcomes) -> None:
    caught(kit, "ListsKeysAsBytes", TYPES, says="list('') returned bytes; it must return str keys")


def test_a_size_stated_as_a_float_is_caught(kit: Outcomes) -> None:
    """``Stat(3.0)`` compares equal to ``Stat(3)``: only a check of the type sees it."""
    caught(
        kit,
        "StatsSizesAsFloats",
        TYPES,
        says="stat('types/k').size returned float; it must return an int >= 0",
    )
    passed = [name for name, seen in kit["StatsSizesAsFloats"].items() if seen.kind == "passed"]
    assert "test_stat_reports_the_size_and_version_of_what_was_written" in passed
