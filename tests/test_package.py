import subprocess
import sys

import vitalstats as vs


def test_version_matches_installed_metadata():
    from importlib.metadata import version

    assert vs.__version__ == version("vitalstats")


def test_cli_version_prints_the_version():
    out = subprocess.run(
        [sys.executable, "-m", "vitalstats", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"vitalstats {vs.__version__}"


def test_import_stays_light():
    """``import vitalstats`` must not pull in matplotlib or the monitor eagerly."""
    code = (
        "import sys, vitalstats; "
        "print(' '.join(m for m in ('matplotlib', 'vitalstats.monitor', 'sklearn') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vs.nope
