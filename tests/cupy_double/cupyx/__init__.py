"""Test double of cupyx (see ../README.md): only its scipy submodules are used by proxnp."""
