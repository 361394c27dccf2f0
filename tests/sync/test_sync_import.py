"""sync's public API is curated (its I/O-free import is checked in tests/test_cores.py)."""


def test_public_api_is_curated():
    import sync

    assert "Replica" in sync.__all__
    for name in sync.__all__:
        assert hasattr(sync, name), name
