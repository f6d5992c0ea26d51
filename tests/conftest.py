"""Shared fixtures: real three-party consortia on small synthetic data."""

from __future__ import annotations

import pytest

from ppa_kernel import Consortium
from ppa_kernel.analyst.synthetic import generate

pytest_plugins = ["browser_fixtures"]  # lab, browser, notebook: shared by the browser tests


@pytest.fixture(scope="session")
def demo_data():
    """Small demo-shaped data: uneven sizes, partial overlap, missing values, small cells."""
    return generate(n_core=260, seed=11, insurer_extra=0.6, bureau_extra=0.9,
                    hospital_extra=0.2)


NO_DIFFERENCING = {"differencing": False}
"""Policy of the shared consortium: its tests compare each release with a pandas oracle
that knows nothing of earlier releases, so the differencing rule (which depends on every
release of the session) is off there and tested on consortia of its own."""


@pytest.fixture(scope="session")
def consortium(demo_data, tmp_path_factory):
    """Three local party kernels on ``demo_data`` that record every opened value."""
    folder = tmp_path_factory.mktemp("consortium")
    with Consortium.local(demo_data, link="pseudonym", workdir=folder, record_openings=True,
                          policies={p: NO_DIFFERENCING for p in demo_data}) as c:
        yield c


@pytest.fixture(scope="module")
def shell(consortium):
    """An IPython shell with the extension loaded, connected to the shared consortium."""
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "ppa_kernel")
    folder = consortium.local_parties.folder
    ip.run_line_magic("ppa", f"connect {folder / 'consortium.toml'} "
                             f"--identity {folder / 'keys' / 'analyst'}")
    yield ip
    ip.run_line_magic("unload_ext", "ppa_kernel")
