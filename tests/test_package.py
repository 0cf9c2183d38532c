"""The installed package as a user sees it (issue 18): its version and its licence."""

import importlib.metadata
import pathlib

import ferroloop

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_version_is_the_distributions():
    assert ferroloop.__version__ == importlib.metadata.version("ferroloop")
    assert ferroloop.__version__ != "0+unknown"


def test_the_licence_files_are_installed_with_the_package():
    dist = importlib.metadata.distribution("ferroloop")
    assert dist.metadata["License-Expression"] == "MIT OR Apache-2.0"
    assert sorted(dist.metadata.get_all("License-File")) == ["LICENSE-APACHE", "LICENSE-MIT"]
    installed = {pathlib.PurePath(f).name: f for f in dist.files if "LICENSE" in str(f)}
    assert sorted(installed) == ["LICENSE-APACHE", "LICENSE-MIT"]
    for name, f in installed.items():
        assert dist.locate_file(f).read_text() == (ROOT / name).read_text()
