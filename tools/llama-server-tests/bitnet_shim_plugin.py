"""pytest plugin for run.sh --shim: llama.cpp's conftest.py starts every ServerPreset once per
test module (`ServerPreset.load_all()`) only to download their models into the cache. Under the
`llama-server` shim there is nothing to download (every preset runs the bundled demo model), and
presets the shim refuses (the router, the reranker) would make that fixture, and so every test
of the module, fail. This makes it a no-op; each test still starts its own server."""


def pytest_configure(config):
    import utils  # llama.cpp's tests/utils.py, found on sys.path (run.sh sets PYTHONPATH)

    utils.ServerPreset.load_all = staticmethod(lambda: None)
