"""Shared test settings.

Under CI=true a skipped test is a failure: integration tests must run there, not quietly skip. That holds
for skips while a test runs (pytest.skip, skipif marks) and for skips while a module is collected (a
module-level pytest.importorskip), which would otherwise drop every test of the module without a trace.
"""

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which is not allowed: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped at collection under CI=true, which is not allowed: {report.longrepr}"
