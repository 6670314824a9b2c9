"""Root conftest: names available to the docstring examples run by `pytest --doctest-modules`."""
import pytest


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace, tmp_path):
    doctest_namespace["tmp"] = tmp_path
